"""OpenAI-compatible request and response bodies.

Unknown request fields are ignored (as OpenAI does); a wrong type or value fails decoding and becomes
a 400 that names the parameter (see ``vlm_gateway.errors.from_validation``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType, field

NonNegInt = Annotated[int, Meta(ge=0)]
PosInt = Annotated[int, Meta(ge=1)]
Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
Probability = Annotated[float, Meta(ge=0.0, le=1.0)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
# token id (as JSON object keys are: a string) → a bias added to its logit, as OpenAI bounds it
LogitBias = dict[str, Annotated[float, Meta(ge=-100.0, le=100.0)]]
TopK = Annotated[int, Meta(ge=-1)]  # vLLM's: -1 or 0 means all tokens
RepetitionPenalty = Annotated[float, Meta(gt=0.0, le=2.0)]
Seed = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]  # OpenAI's and vLLM's: a signed 64-bit integer
Choices = Annotated[int, Meta(ge=1, le=128)]  # n: OpenAI's bounds
TopP = Annotated[float, Meta(ge=0.0, le=1.0)]  # 0: the most likely token only
Detail = Literal["auto", "low", "high", "original"]  # "original": as sent, within the model's limits (= high)


# --- request content ----------------------------------------------------------------------------

class ImageUrl(Struct):
    url: str | None = None  # https URL or data URI
    detail: Detail | None = "auto"  # null, for every optional field here (as the SDK sends a None): the default
    file_id: str | None = None  # an uploaded file (/v1/files) instead of ``url``

    def __post_init__(self) -> None:
        self.detail = self.detail or "auto"


class TextPart(Struct, tag_field="type", tag="text"):
    text: str


class ImageUrlPart(Struct, tag_field="type", tag="image_url"):
    image_url: ImageUrl


class ImagePart(Struct, tag_field="type", tag="image"):
    """Hugging Face form: ``{"type": "image"}`` (the conformance cases), optionally with a source."""

    url: str | None = None
    image: str | None = None
    detail: Detail | None = "auto"

    def __post_init__(self) -> None:
        self.detail = self.detail or "auto"


class FileRef(Struct):
    file_id: str | None = None
    filename: str | None = None
    file_data: str | None = None  # a data URI


class FilePart(Struct, tag_field="type", tag="file"):
    """OpenAI's file content part; an image file (by ``file_id`` or ``file_data``) is an image."""

    file: FileRef


ContentPart = Union[TextPart, ImageUrlPart, ImagePart, FilePart]
Role = Literal["system", "developer", "user", "assistant", "tool"]


# --- tools --------------------------------------------------------------------------------------

class FunctionDef(Struct):
    name: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
    description: str | None = None
    parameters: dict | None = None  # a JSON schema; None: no arguments
    strict: bool | None = None


class Tool(Struct):
    function: FunctionDef
    type: Literal["function"] = "function"


class FunctionName(Struct):
    name: str


class NamedToolChoice(Struct):
    function: FunctionName
    type: Literal["function"] = "function"


ToolChoice = Union[Literal["none", "auto", "required"], NamedToolChoice]


class FunctionCall(Struct):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(Struct):
    id: str
    function: FunctionCall
    type: Literal["function"] = "function"


class ChatMessage(Struct):
    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # assistant: the calls it made
    tool_call_id: str | None = None  # tool: the call this message answers


class StreamOptions(Struct):
    include_usage: bool | None = False

    def __post_init__(self) -> None:
        self.include_usage = bool(self.include_usage)


class JsonSchemaSpec(Struct):
    name: str = "response"
    schema: dict | None = field(default=None, name="schema")
    strict: bool | None = None
    description: str | None = None


class TextFormat(Struct, tag_field="type", tag="text"):
    pass


class JsonObjectFormat(Struct, tag_field="type", tag="json_object"):
    pass


class JsonSchemaFormat(Struct, tag_field="type", tag="json_schema"):
    json_schema: JsonSchemaSpec


ResponseFormat = Union[TextFormat, JsonObjectFormat, JsonSchemaFormat]


class ChatCompletionRequest(Struct):
    model: str
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    max_tokens: PosInt | None = None
    max_completion_tokens: PosInt | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: Choices | None = 1  # null, for these four (as the SDK sends a None): the default
    stop: str | list[str] | None = None
    seed: Seed | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = False
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None
    user: str | None = None
    modalities: list[Literal["text"]] | None = None  # the models answer in text: "audio" is refused
    prompt_cache_key: str | None = None  # requests with the same key go to the same engine (its caches)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None  # None: "auto" with tools, "none" without
    parallel_tool_calls: bool | None = True
    functions: list[dict[str, Any]] | None = None  # OpenAI's deprecated form of tools: refused (a 400)
    function_call: str | dict[str, Any] | None = None
    # extensions, as vLLM names them
    return_token_ids: bool | None = False  # the prompt ids the engine saw, images expanded
    min_tokens: NonNegInt | None = 0
    ignore_eos: bool | None = False
    top_k: TopK | None = None  # these three default to the checkpoint's generation_config.json
    min_p: Probability | None = None
    repetition_penalty: RepetitionPenalty | None = None

    def __post_init__(self) -> None:
        self.n = 1 if self.n is None else self.n
        self.stream, self.logprobs = bool(self.stream), bool(self.logprobs)
        self.parallel_tool_calls = self.parallel_tool_calls is not False
        _extensions_default(self)


class ImageRef(Struct):
    url: str
    detail: Detail | None = "auto"

    def __post_init__(self) -> None:
        self.detail = self.detail or "auto"


ImageInput = Union[str, ImageRef]


class CompletionExtraBody(Struct):
    images: list[ImageInput] | None = None


TokenIds = Annotated[list[NonNegInt], Meta(min_length=1)]
# OpenAI's four forms: a string, strings, token ids, lists of token ids. msgspec decodes one array type
# per union, so a list is decoded loosely here and its form checked by
# ``prompts.raw_completions.completion_prompts``.
Prompt = Union[str, Annotated[list[Union[str, NonNegInt, TokenIds]], Meta(min_length=1)]]


class CompletionRequest(Struct):
    model: str
    prompt: Prompt  # a string, strings, token ids or lists of token ids: one choice per prompt per `n`
    images: list[ImageInput] | None = None
    extra_body: CompletionExtraBody | None = None
    max_tokens: NonNegInt | None = 16  # 0 with echo: the prompt scored (its logprobs), nothing generated
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: Choices | None = 1  # null, for these three (as the SDK sends a None): the default
    stop: str | list[str] | None = None
    seed: Seed | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    echo: bool | None = False
    suffix: str | None = None  # OpenAI's legacy insertion: refused (a 400), not ignored
    best_of: PosInt | None = None  # the same: refused unless it equals n
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None
    user: str | None = None
    return_token_ids: bool | None = False
    min_tokens: NonNegInt | None = 0
    ignore_eos: bool | None = False
    top_k: TopK | None = None
    min_p: Probability | None = None
    repetition_penalty: RepetitionPenalty | None = None

    def __post_init__(self) -> None:
        self.n = 1 if self.n is None else self.n
        self.max_tokens = 16 if self.max_tokens is None else self.max_tokens  # OpenAI's default, null or not
        self.stream, self.echo = bool(self.stream), bool(self.echo)
        _extensions_default(self)


def _extensions_default(req: ChatCompletionRequest | CompletionRequest) -> None:
    """vLLM's extension fields, null read as their defaults (as OpenAI reads a null)."""
    req.return_token_ids, req.ignore_eos = bool(req.return_token_ids), bool(req.ignore_eos)
    req.min_tokens = req.min_tokens or 0


# --- responses ----------------------------------------------------------------------------------

class PromptTokensDetails(Struct):
    cached_tokens: int = 0
    image_tokens: int = 0


class Usage(Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class AssistantMessage(Struct):
    content: str | None
    role: str = "assistant"
    tool_calls: list[ToolCall] | UnsetType = UNSET


FinishReason = Literal["stop", "length", "tool_calls"]


class TopLogprob(Struct):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(Struct):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(Struct):
    """Chat completions' ``logprobs``: one entry per generated token."""

    content: list[TokenLogprob] | None
    refusal: None = None


class CompletionLogprobs(Struct):
    """Completions' (legacy) ``logprobs``: parallel lists, one entry per token."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class ChatChoice(Struct):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason | None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(Struct):
    id: str
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    object: str = "chat.completion"
    prompt_token_ids: list[int] | UnsetType = UNSET  # with return_token_ids: after image expansion


class FunctionCallDelta(Struct, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(Struct, omit_defaults=True):
    """A piece of a streamed tool call: the first piece of a call carries its id, type and name;
    later pieces append to ``function.arguments`` of the call at ``index``."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta | None = None


class Delta(Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(Struct):
    index: int
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(Struct):
    id: str
    created: int
    model: str
    choices: list[ChunkChoice]
    object: str = "chat.completion.chunk"
    usage: Usage | None | UnsetType = UNSET  # null on every chunk but the last where usage is asked for
    prompt_token_ids: list[int] | UnsetType = UNSET


class CompletionChoice(Struct):
    index: int
    text: str
    finish_reason: FinishReason | None
    logprobs: CompletionLogprobs | None = None


class Completion(Struct):
    id: str
    created: int
    model: str
    choices: list[CompletionChoice]
    object: str = "text_completion"
    usage: Usage | None | UnsetType = UNSET  # streamed: as the chunk's above
    prompt_token_ids: list[int] | UnsetType = UNSET


class ModelCard(Struct):
    id: str
    created: int
    owned_by: str
    family: str
    max_images: int
    context_length: int | None  # the configured length, else the engine's max_model_len (None until known)
    object: str = "model"


class ModelList(Struct):
    data: list[ModelCard]
    object: str = "list"


class Health(Struct):
    status: str
    timestamp: str  # ISO 8601
    model_loaded: bool
    gpu_available: bool


class Readiness(Struct):
    status: Literal["ready", "loading"]
    loading: list[str]  # the models whose engines this replica runs itself and that are not up yet


DECODE_CHAT = msgspec.json.Decoder(ChatCompletionRequest)
DECODE_COMPLETION = msgspec.json.Decoder(CompletionRequest)
