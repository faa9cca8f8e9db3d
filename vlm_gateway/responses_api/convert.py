"""A Responses request as a chat request, and a stored response back as chat history.

``to_chat`` builds the ``ChatCompletionRequest`` the chat pipeline runs: ``instructions`` first (a system
message), then the stored conversation of ``previous_response_id``, then the ``input`` items:

    message (user/system/developer)  → a chat message; input_text / input_image / input_file parts 1:1
    message (assistant)              → an assistant message with the text of its output_text parts
    function_call                    → an assistant message's tool call (consecutive calls: one message)
    function_call_output             → a ``tool`` message (its output may be text or parts with images); its
                                       ``call_id`` must be a call made before it (here or in the conversation)
    reasoning                        → skipped (these models produce none; an earlier turn's is noise)

The chat pipeline names what it refuses by chat parameters (``messages[3].content[0].image_url``);
``Converted.params`` says where each came from, and ``renamed`` rewrites a raised error's ``param`` so
the client reads ``input[2].content[0].image_url``.

``truncation: "auto"``: ``without_oldest_turn`` gives the same request less its oldest turn, for a
conversation too long for the model's context (``run.py`` asks for it while the pipeline says so).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable
from typing import Any

import msgspec

from vlm_gateway.errors import InvalidRequest, params_renamed
from vlm_gateway.schemas.openai import (
    ChatCompletionRequest,
    ChatMessage,
    ContentPart,
    FilePart,
    FileRef,
    FunctionCall,
    FunctionDef,
    FunctionName,
    ImageUrl,
    ImageUrlPart,
    JsonObjectFormat,
    JsonSchemaFormat,
    JsonSchemaSpec,
    NamedToolChoice,
    ResponseFormat,
    TextFormat,
    TextPart,
    Tool,
    ToolCall,
    ToolChoice,
)
from vlm_gateway.schemas.responses import (
    FormatJsonObject,
    FormatJsonSchema,
    HistoryRefusal,
    HistoryText,
    InputFile,
    InputFunctionCall,
    InputImage,
    InputItem,
    InputMessage,
    InputText,
    OutputFunctionCall,
    OutputItem,
    OutputMessage,
    ResponsesRequest,
    ToolChoiceFunction,
)

LOGPROBS = "message.output_text.logprobs"  # the ``include`` value that asks for output logprobs
_ITEM_TYPES = {"message", "function_call", "function_call_output"}
_WHOLE = {"instructions", "previous_response_id"}  # errors inside these name the field only
_CHAT_NAMES = {"max_tokens": "max_output_tokens", "response_format": "text.format"}  # chat's name → this API's
_AT = re.compile(r"at `\$(.*?)`")
_MISSING = re.compile(r"^Object missing required field `(\w+)`")
_MESSAGE = re.compile(r"messages\[(\d+)\](.*)", re.DOTALL)


class Converted(msgspec.Struct):
    chat: ChatCompletionRequest
    history: list[ChatMessage]  # the conversation to store: earlier turns + this input (no instructions)
    params: dict[str, str]  # chat parameter (or its prefix) → the Responses parameter it came from


# --- errors: chat parameter names → Responses parameter names -----------------------------------

def rename(params: dict[str, str], param: str | None) -> str | None:
    """The Responses name of chat parameter ``param``: the longest known prefix is replaced."""
    if param is None:
        return None
    for end in [len(param), *sorted((m.start() for m in re.finditer(r"[.\[]", param)), reverse=True)]:
        if param[:end] in params:
            return _join(params[param[:end]], param[end:])
    return param


def _join(name: str, rest: str) -> str:
    return name if name in _WHOLE else name + rest


def renamed(params: dict[str, str]) -> contextlib.AbstractContextManager[None]:
    """Errors raised inside name Responses parameters."""
    return params_renamed(lambda param: rename(params, param))


def _convert(value: Any, kind: Any, param: str) -> Any:
    """``msgspec.convert`` whose errors name ``param`` and the path inside it (``input[2].content[0]``),
    down to the field a missing one is (``input[0].content``: msgspec's path ends at its object)."""
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        match = _AT.search(str(exc))
        at = param + (match.group(1) if match else "")
        missing = _MISSING.match(str(exc))
        field = f"{at}.{missing.group(1)}" if missing else at
        raise InvalidRequest(_AT.sub(f"at `{at}`", str(exc)), param=field, code="invalid_value") from None


# --- input items → chat messages ----------------------------------------------------------------

class _Builder:
    """Chat messages, and for each the Responses parameter it came from; the ids of the calls made so far."""

    def __init__(self, called: Iterable[str] = ()) -> None:
        self.messages: list[ChatMessage] = []
        self.called = set(called)
        self.params: dict[str, str] = {"messages": "input", "response_format.json_schema": "text.format",
                                       "response_format": "text.format", "max_completion_tokens": "max_output_tokens"}

    def add(self, message: ChatMessage, origin: str) -> None:
        self.params[f"messages[{len(self.messages)}]"] = origin
        self.messages.append(message)
        self.called.update(call.id for call in message.tool_calls or [])
        if message.tool_call_id is not None:  # (an earlier turn's output for a call left out of its history)
            self.called.add(message.tool_call_id)

    def item(self, raw: dict[str, Any], i: int) -> None:
        param = f"input[{i}]"
        kind = raw.get("type", "message")
        if kind == "reasoning":
            return
        if kind not in _ITEM_TYPES:
            raise InvalidRequest(f"input items of type {kind!r} are not supported here; send message, function_call "
                                 "or function_call_output items", param=f"{param}.type")
        item = _convert(raw if "type" in raw else {**raw, "type": "message"}, InputItem, param)
        if isinstance(item, InputMessage):
            self.message(item, param)
        elif isinstance(item, InputFunctionCall):
            self.called.add(item.call_id)
            if item.status == "incomplete" and not whole_arguments(item.arguments):
                return  # a call cut off at max_output_tokens, sent back as it came: never made
            call = ToolCall(item.call_id, FunctionCall(item.name, item.arguments))
            last = self.messages[-1] if self.messages else None
            if last is not None and last.role == "assistant":  # the same turn: text, then its calls
                if all(c.id != call.id for c in last.tool_calls or []):  # not already in the stored turn
                    last.tool_calls = [*(last.tool_calls or []), call]
            else:
                self.add(ChatMessage("assistant", None, tool_calls=[call]), param)
                last = self.messages[-1]
            k = next(k for k, c in enumerate(last.tool_calls or []) if c.id == call.id)
            self.params.setdefault(f"messages[{len(self.messages) - 1}].tool_calls[{k}].function", param)
        else:  # InputFunctionCallOutput
            if item.call_id not in self.called:  # a result for no call: the model would read it without its question
                raise InvalidRequest(f"No tool call found for function call output with call_id {item.call_id}.",
                                     param=f"{param}.call_id")
            output = item.output
            if isinstance(output, list):
                where = f"messages[{len(self.messages)}]"
                output = self.parts(output, where, f"{param}.output")
            self.add(ChatMessage("tool", output, tool_call_id=item.call_id), param)

    def message(self, item: InputMessage, param: str) -> None:
        content = item.content
        if item.role == "assistant" and isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if not isinstance(part, (HistoryText, InputText, HistoryRefusal)):
                    raise InvalidRequest("an assistant message holds text only", param=f"{param}.content[{j}]")
                texts.append(part.refusal if isinstance(part, HistoryRefusal) else part.text)
            content = "".join(texts)
        elif isinstance(content, list):
            content = self.parts(content, f"messages[{len(self.messages)}]", f"{param}.content")
        self.add(ChatMessage(item.role, content), param)

    def parts(self, parts: list, chat: str, origin: str) -> list[ContentPart]:
        """Content parts 1:1 (so ``content[j]`` is the same part in both), images mapped by their field."""
        out: list[ContentPart] = []
        for j, part in enumerate(parts):
            here, there = f"{chat}.content[{j}]", f"{origin}[{j}]"
            if isinstance(part, InputImage):
                if (part.image_url is None) == (part.file_id is None):
                    raise InvalidRequest("an input_image needs an image_url or a file_id (one of them)", param=there)
                self.params[f"{here}.image_url"] = f"{there}.{'image_url' if part.file_id is None else 'file_id'}"
                out.append(ImageUrlPart(ImageUrl(url=part.image_url, detail=part.detail, file_id=part.file_id)))
            elif isinstance(part, InputFile):
                if (part.file_data is None) == (part.file_id is None):
                    raise InvalidRequest("an input_file needs a file_id or a file_data (one of them)", param=there)
                self.params[f"{here}.file"] = f"{there}.{'file_data' if part.file_id is None else 'file_id'}"
                out.append(FilePart(FileRef(file_id=part.file_id, filename=part.filename, file_data=part.file_data)))
            else:
                out.append(TextPart(part.refusal if isinstance(part, HistoryRefusal) else part.text))
        return out


# --- the request --------------------------------------------------------------------------------

def _tools(req: ResponsesRequest, params: dict[str, str]) -> list[Tool] | None:
    if not req.tools:
        return None
    for t in range(len(req.tools)):
        params[f"tools[{t}].function"] = f"tools[{t}]"
    return [Tool(FunctionDef(t.name, t.description, t.parameters, t.strict)) for t in req.tools]


def _tool_choice(req: ResponsesRequest) -> ToolChoice | None:
    choice = req.tool_choice
    if not isinstance(choice, ToolChoiceFunction):
        return choice
    if choice.name not in {t.name for t in req.tools or []}:
        raise InvalidRequest(f"tool_choice names function {choice.name!r}, which is not among the tools",
                             param="tool_choice.name")
    return NamedToolChoice(FunctionName(choice.name))


def _response_format(req: ResponsesRequest) -> ResponseFormat | None:
    fmt = req.text.format if req.text is not None else None
    if isinstance(fmt, FormatJsonSchema):
        return JsonSchemaFormat(JsonSchemaSpec(fmt.name, fmt.schema, fmt.strict, fmt.description))
    if isinstance(fmt, FormatJsonObject):
        return JsonObjectFormat()
    return TextFormat() if fmt is not None else None


def _refuse_chat_names(req: ResponsesRequest) -> None:
    """A chat field sent here is a 400 naming it: ignored, it would leave the answer without the output
    limit or the structured output the client meant to ask for."""
    for chat, here in _CHAT_NAMES.items():
        if getattr(req, chat) is not None:
            raise InvalidRequest(f"Unsupported parameter: '{chat}'. In the Responses API, this parameter has moved "
                                 f"to '{here}'.", param=chat, code="unknown_parameter")


def to_chat(req: ResponsesRequest, previous: list[ChatMessage], called: Iterable[str] = ()) -> Converted:
    """The chat request for ``req``, continuing the ``previous`` conversation (``previous_response_id``);
    ``called``: the ids of the calls that response made (a ``function_call_output`` must answer a call)."""
    _refuse_chat_names(req)
    if req.conversation is not None:
        raise InvalidRequest("conversations are not kept here; continue one with previous_response_id",
                             param="conversation")
    if req.prompt is not None:
        raise InvalidRequest("stored prompt templates are not kept here; send instructions and input",
                             param="prompt")
    built = _Builder(called)
    if req.instructions:
        built.add(ChatMessage("system", req.instructions), "instructions")
    start = len(built.messages)
    for message in previous:
        built.add(message, "previous_response_id")
    if isinstance(req.input, str):
        built.add(ChatMessage("user", req.input), "input")
    else:
        for i, raw in enumerate(req.input or []):
            built.item(raw, i)
    if len(built.messages) == start and not previous:
        raise InvalidRequest("input is required: a string or a list of input items", param="input")
    logprobs = req.top_logprobs is not None or LOGPROBS in (req.include or [])
    chat = ChatCompletionRequest(
        model=req.model,
        messages=built.messages,
        max_completion_tokens=req.max_output_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        user=req.user,
        tools=_tools(req, built.params),
        tool_choice=_tool_choice(req),
        parallel_tool_calls=req.parallel_tool_calls is not False,
        response_format=_response_format(req),
        logprobs=logprobs,
        top_logprobs=req.top_logprobs if logprobs else None,
        prompt_cache_key=req.prompt_cache_key,
    )
    return Converted(chat, built.messages[start:], built.params)


def without_oldest_turn(converted: Converted) -> Converted | None:
    """``converted`` less its oldest turn, or None when only one is left.

    A turn runs from a user message to the next one (the assistant's answer, its tool calls and their
    results with it), so no call loses its result and templates that want user and assistant turns to
    alternate still get them. The system messages ahead of the conversation (``instructions``) stay.
    ``params`` follows the messages that moved, so errors still name the client's fields."""
    messages = converted.chat.messages
    start = next((i for i, m in enumerate(messages) if m.role not in ("system", "developer")), len(messages))
    end = next((i for i in range(start + 1, len(messages)) if messages[i].role == "user"), None)
    if end is None:
        return None
    params: dict[str, str] = {}
    for key, origin in converted.params.items():
        found = _MESSAGE.fullmatch(key)
        if found is None:
            params[key] = origin
        elif (i := int(found[1])) < start or i >= end:
            params[f"messages[{i if i < start else i - (end - start)}]{found[2]}"] = origin
    chat = msgspec.structs.replace(converted.chat, messages=messages[:start] + messages[end:])
    return msgspec.structs.replace(converted, chat=chat, params=params)


def whole_arguments(text: str) -> bool:
    """Arguments that are a JSON object (or empty): not a call cut off mid-way."""
    try:
        return not text.strip() or isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


def output_messages(output: list[OutputItem]) -> list[ChatMessage]:
    """A response's output as the assistant turn it adds to the conversation (for a follow-up). A call
    cut off at ``max_output_tokens`` was never made: it is left out, so the conversation goes on."""
    text = "".join(part.text for item in output if isinstance(item, OutputMessage) for part in item.content)
    calls = [ToolCall(item.call_id, FunctionCall(item.name, item.arguments))
             for item in output if isinstance(item, OutputFunctionCall)
             and (item.status != "incomplete" or whole_arguments(item.arguments))]
    if not text and not calls:
        return []
    return [ChatMessage("assistant", text or None, tool_calls=calls or None)]
