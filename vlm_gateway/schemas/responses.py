"""Wire formats of OpenAI's Responses API (``/v1/responses``): data only.

Request: ``ResponsesRequest``. Its ``input`` items stay JSON objects when the body is decoded and are
converted one by one into ``InputItem`` by ``responses_api.convert``: OpenAI lets a message item leave out
its ``type`` (which a msgspec tagged union cannot decode), and an error can then name ``input[2]...``.

Response: ``ResponseObject`` (the SDK's ``openai.types.responses.Response``) with its output items and
usage, ``ResponseDeleted``, and the streaming events (``sequence_number`` is set as they are sent).
Unknown request fields are ignored, as on the other routes, except chat's names for what this API
names otherwise (``max_tokens``, ``response_format``): declared so they are refused, not dropped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from msgspec import Meta, Struct, field

from vlm_gateway.schemas.openai import Detail, PosInt, Temperature, TopP

Includable = Literal[
    "file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
    "message.input_image.image_url", "computer_call_output.output.image_url", "code_interpreter_call.outputs",
    "reasoning.encrypted_content", "message.output_text.logprobs",
]
FunctionName = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
Metadata = Annotated[dict[Annotated[str, Meta(max_length=64)], Annotated[str, Meta(max_length=512)]],
                     Meta(max_length=16)]


# --- request: content parts ---------------------------------------------------------------------

class InputText(Struct, tag_field="type", tag="input_text"):
    text: str


class InputImage(Struct, tag_field="type", tag="input_image"):
    image_url: str | None = None  # https URL or data URI
    file_id: str | None = None  # an uploaded file (/v1/files) instead
    detail: Detail = "auto"


class InputFile(Struct, tag_field="type", tag="input_file"):
    """A file part; an image file (by ``file_id`` or ``file_data``) is an image, as in chat."""

    file_id: str | None = None
    file_data: str | None = None  # a data URI
    filename: str | None = None


class HistoryText(Struct, tag_field="type", tag="output_text"):
    """An earlier assistant turn's text, sent back as history."""

    text: str


class HistoryRefusal(Struct, tag_field="type", tag="refusal"):
    refusal: str


InputContent = Union[InputText, InputImage, InputFile, HistoryText, HistoryRefusal]
ToolOutputContent = Union[InputText, InputImage, InputFile]  # a tool's result may carry images


# --- request: input items -----------------------------------------------------------------------

class InputMessage(Struct, tag_field="type", tag="message"):
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[InputContent]


class InputFunctionCall(Struct, tag_field="type", tag="function_call"):
    """A call the model made in an earlier turn."""

    call_id: str
    name: str
    arguments: str  # JSON text
    status: str | None = None  # as the output item had it ("incomplete": cut off at max_output_tokens)


class InputFunctionCallOutput(Struct, tag_field="type", tag="function_call_output"):
    """The caller's result for ``call_id``."""

    call_id: str
    output: str | list[ToolOutputContent]


InputItem = Union[InputMessage, InputFunctionCall, InputFunctionCallOutput]


# --- request: tools and formats -----------------------------------------------------------------

class FunctionTool(Struct, tag_field="type", tag="function"):
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema
    strict: bool | None = None


class ToolChoiceFunction(Struct, tag_field="type", tag="function"):
    name: str


ToolChoice = Union[Literal["none", "auto", "required"], ToolChoiceFunction]


class FormatText(Struct, tag_field="type", tag="text"):
    pass


class FormatJsonObject(Struct, tag_field="type", tag="json_object"):
    pass


class FormatJsonSchema(Struct, tag_field="type", tag="json_schema"):
    name: str
    schema: dict[str, Any] = field(name="schema")
    description: str | None = None
    strict: bool | None = None


TextFormat = Union[FormatText, FormatJsonObject, FormatJsonSchema]


class TextConfig(Struct):
    format: TextFormat = field(default_factory=FormatText)
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponsesRequest(Struct):
    model: str
    input: str | list[dict[str, Any]] | None = None  # items: see ``InputItem`` (converted one by one)
    instructions: str | None = None
    previous_response_id: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: PosInt | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    include: list[Includable] | None = None  # OpenAI's values (those of tools this has none of: no effect)
    metadata: Metadata | None = None
    user: str | None = None
    store: bool | None = None  # None: true
    background: bool | None = None
    stream: bool | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None  # echoed (a stable id of the end user, as OpenAI asks for)
    # "auto": a conversation too long for the model's context loses its oldest turns until it fits
    # (responses_api/convert.py, ``without_oldest_turn``); "disabled" (or null): a 400 context_length_exceeded
    truncation: Literal["auto", "disabled"] | None = None
    # OpenAI-hosted state this gateway does not keep: declared so that a request using them is refused
    # (``responses_api.convert``) rather than answered without the context the client meant to send
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    # chat's fields, sent here by clients moved over from /v1/chat/completions: refused (``responses_api.convert``)
    # rather than ignored, which would drop the output limit or the structured output the client asked for
    max_tokens: Any = None
    response_format: Any = None


# --- response -----------------------------------------------------------------------------------

ItemStatus = Literal["in_progress", "completed", "incomplete"]
ResponseStatus = Literal["queued", "in_progress", "completed", "incomplete", "failed", "cancelled"]


class TopLogprob(Struct):
    token: str
    bytes: list[int]
    logprob: float


class Logprob(Struct):
    token: str
    bytes: list[int]
    logprob: float
    top_logprobs: list[TopLogprob]


class OutputText(Struct, tag_field="type", tag="output_text"):
    text: str
    annotations: list[Any] = []
    logprobs: list[Logprob] = []


class OutputMessage(Struct, tag_field="type", tag="message", kw_only=True):
    id: str  # msg_...
    status: ItemStatus
    content: list[OutputText]
    role: Literal["assistant"] = "assistant"


class OutputFunctionCall(Struct, tag_field="type", tag="function_call", kw_only=True):
    id: str  # fc_...
    call_id: str  # what the caller's function_call_output names
    name: str
    arguments: str
    status: ItemStatus


OutputItem = Union[OutputMessage, OutputFunctionCall]


class InputTokensDetails(Struct):
    cached_tokens: int = 0
    cache_write_tokens: int = 0  # the SDK requires it; nothing is written to a prompt cache here
    image_tokens: int = 0  # the gateway's own, as in chat's prompt_tokens_details


class OutputTokensDetails(Struct):
    reasoning_tokens: int = 0


class ResponseUsage(Struct):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class ResponseError(Struct):
    code: str  # one of OpenAI's response error codes (server_error, invalid_prompt, invalid_image, ...)
    message: str
    param: str | None = None
    type: str | None = None  # the gateway error's type (invalid_request_error, ...)


class IncompleteDetails(Struct):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseObject(Struct, kw_only=True):
    id: str  # resp_...
    object: Literal["response"] = "response"
    created_at: int
    completed_at: int | None = None
    status: ResponseStatus
    model: str
    output: list[OutputItem] = []
    usage: ResponseUsage | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    tools: list[FunctionTool] = []
    tool_choice: ToolChoice = "auto"
    parallel_tool_calls: bool = True
    text: TextConfig = field(default_factory=TextConfig)
    temperature: float | None = None
    top_p: float | None = None
    top_logprobs: int | None = None
    max_output_tokens: int | None = None
    previous_response_id: str | None = None
    store: bool = True
    background: bool = False
    metadata: dict[str, str] = {}
    user: str | None = None
    truncation: Literal["auto", "disabled"] = "disabled"
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None


class ResponseDeleted(Struct):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


# --- GET /v1/responses/{id}/input_items ---------------------------------------------------------

ListedContent = Union[InputText, InputImage, InputFile, OutputText]


class ListedMessage(Struct, tag_field="type", tag="message", kw_only=True):
    id: str  # msg_...
    role: Literal["user", "system", "developer", "assistant"]
    content: list[ListedContent]  # input_* parts; output_text for an assistant's
    status: ItemStatus = "completed"


class ListedFunctionCall(Struct, tag_field="type", tag="function_call", kw_only=True):
    id: str  # fc_...
    call_id: str
    name: str
    arguments: str
    status: ItemStatus = "completed"


class ListedFunctionCallOutput(Struct, tag_field="type", tag="function_call_output", kw_only=True):
    id: str  # fco_...
    call_id: str
    output: str | list[ToolOutputContent]
    status: ItemStatus = "completed"


ListedItem = Union[ListedMessage, ListedFunctionCall, ListedFunctionCallOutput]


class InputItemList(Struct, kw_only=True):
    """One cursor page of the items a response was given (``after=last_id`` for the next while ``has_more``)."""

    object: Literal["list"] = "list"
    data: list[ListedItem]
    has_more: bool
    first_id: str | None
    last_id: str | None


# --- streaming events ---------------------------------------------------------------------------

class ResponseCreated(Struct, tag_field="type", tag="response.created", kw_only=True):
    response: ResponseObject
    sequence_number: int = 0


class ResponseInProgress(Struct, tag_field="type", tag="response.in_progress", kw_only=True):
    response: ResponseObject
    sequence_number: int = 0


class ResponseCompleted(Struct, tag_field="type", tag="response.completed", kw_only=True):
    response: ResponseObject
    sequence_number: int = 0


class ResponseIncomplete(Struct, tag_field="type", tag="response.incomplete", kw_only=True):
    response: ResponseObject
    sequence_number: int = 0


class ResponseFailed(Struct, tag_field="type", tag="response.failed", kw_only=True):
    response: ResponseObject
    sequence_number: int = 0


class OutputItemAdded(Struct, tag_field="type", tag="response.output_item.added", kw_only=True):
    output_index: int
    item: OutputItem
    sequence_number: int = 0


class OutputItemDone(Struct, tag_field="type", tag="response.output_item.done", kw_only=True):
    output_index: int
    item: OutputItem
    sequence_number: int = 0


class ContentPartAdded(Struct, tag_field="type", tag="response.content_part.added", kw_only=True):
    item_id: str
    output_index: int
    content_index: int
    part: OutputText
    sequence_number: int = 0


class ContentPartDone(Struct, tag_field="type", tag="response.content_part.done", kw_only=True):
    item_id: str
    output_index: int
    content_index: int
    part: OutputText
    sequence_number: int = 0


class OutputTextDelta(Struct, tag_field="type", tag="response.output_text.delta", kw_only=True):
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[Logprob] = []
    sequence_number: int = 0


class OutputTextDone(Struct, tag_field="type", tag="response.output_text.done", kw_only=True):
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[Logprob] = []
    sequence_number: int = 0


class FunctionCallArgumentsDelta(Struct, tag_field="type", tag="response.function_call_arguments.delta",
                                 kw_only=True):
    item_id: str
    output_index: int
    delta: str
    sequence_number: int = 0


class FunctionCallArgumentsDone(Struct, tag_field="type", tag="response.function_call_arguments.done",
                                kw_only=True):
    item_id: str
    output_index: int
    name: str
    arguments: str
    sequence_number: int = 0


StreamEvent = Union[ResponseCreated, ResponseInProgress, ResponseCompleted, ResponseIncomplete, ResponseFailed,
                    OutputItemAdded, OutputItemDone, ContentPartAdded, ContentPartDone, OutputTextDelta,
                    OutputTextDone, FunctionCallArgumentsDelta, FunctionCallArgumentsDone]
