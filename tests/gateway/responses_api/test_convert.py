"""The converters alone, on Structs built here: Responses request → chat request, chat output →
Response object and streaming events (tool calls included, without needing the chat pipeline's tool
parser), checked against the OpenAI SDK's own models and its strict stream accumulator."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import openai
import pytest
from openai._models import construct_type
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent

from vlm_gateway.errors import ImageError, InvalidRequest
from vlm_gateway.responses_api.convert import output_messages, rename, renamed, to_chat, without_oldest_turn
from vlm_gateway.responses_api.events import OutputBuilder, response_events
from vlm_gateway.responses_api.output import base_response
from vlm_gateway.schemas.openai import (
    ChatCompletionChunk,
    ChatMessage,
    ChunkChoice,
    Delta,
    FilePart,
    FunctionCall,
    FunctionCallDelta,
    ImageUrlPart,
    JsonSchemaFormat,
    NamedToolChoice,
    PromptTokensDetails,
    TextPart,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from vlm_gateway.schemas.responses import ResponseObject, ResponsesRequest

DATA_URI = "data:image/png;base64,iVBORw0KGgo="


def request(**fields) -> ResponsesRequest:
    return msgspec.convert({"model": "m", **fields}, ResponsesRequest)


def test_string_input_and_instructions() -> None:
    out = to_chat(request(input="Hello", instructions="Be brief", max_output_tokens=7, temperature=0.5,
                          top_p=0.9, user="u1"), [])
    chat = out.chat
    assert [(m.role, m.content) for m in chat.messages] == [("system", "Be brief"), ("user", "Hello")]
    assert (chat.max_completion_tokens, chat.temperature, chat.top_p, chat.user) == (7, 0.5, 0.9, "u1")
    assert chat.stream is False and chat.logprobs is False and chat.response_format is None
    assert [m.content for m in out.history] == ["Hello"]  # instructions are not carried over


def test_message_items_with_parts() -> None:
    out = to_chat(request(input=[
        {"role": "developer", "content": "Rules"},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "What is this?"},
            {"type": "input_image", "image_url": DATA_URI, "detail": "low"},
            {"type": "input_image", "file_id": "file-abc", "detail": "original"},
            {"type": "input_file", "file_id": "file-def"}]},
        {"role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "A cat", "annotations": []}]},
    ]), [])
    dev, user, assistant = out.chat.messages
    assert (dev.role, dev.content) == ("developer", "Rules")
    text, image, by_id, file = user.content
    assert isinstance(text, TextPart) and text.text == "What is this?"
    assert isinstance(image, ImageUrlPart) and (image.image_url.url, image.image_url.detail) == (DATA_URI, "low")
    assert isinstance(by_id, ImageUrlPart) and (by_id.image_url.file_id, by_id.image_url.url,
                                                by_id.image_url.detail) == ("file-abc", None, "original")
    assert isinstance(file, FilePart) and file.file.file_id == "file-def"
    assert (assistant.role, assistant.content) == ("assistant", "A cat")


def test_function_call_items_become_tool_calls_and_tool_messages() -> None:
    out = to_chat(request(input=[
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": '{"city":"Paris"}',
         "id": "fc_1", "status": "completed"},
        {"type": "function_call", "call_id": "call_2", "name": "weather", "arguments": '{"city":"Rome"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_2", "output": [
            {"type": "input_text", "text": "radar:"}, {"type": "input_image", "image_url": DATA_URI}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
    ]), [])
    user, calls, first, second = out.chat.messages
    assert calls.role == "assistant" and calls.content is None
    assert calls.tool_calls == [ToolCall("call_1", FunctionCall("weather", '{"city":"Paris"}')),
                                ToolCall("call_2", FunctionCall("weather", '{"city":"Rome"}'))]
    assert (first.role, first.tool_call_id, first.content) == ("tool", "call_1", "sunny")
    assert second.tool_call_id == "call_2" and isinstance(second.content[1], ImageUrlPart)
    # the image inside the tool output is named by its Responses path when the pipeline refuses it
    assert rename(out.params, "messages[3].content[1].image_url") == "input[4].output[1].image_url"


def test_text_format_tools_and_logprobs() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    out = to_chat(request(
        input="x", text={"format": {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}},
        tools=[{"type": "function", "name": "weather", "description": "d", "parameters": {"type": "object"},
                "strict": True}],
        tool_choice={"type": "function", "name": "weather"}, parallel_tool_calls=False,
        include=["message.output_text.logprobs"], top_logprobs=3), [])
    chat = out.chat
    assert isinstance(chat.response_format, JsonSchemaFormat)
    assert (chat.response_format.json_schema.name, chat.response_format.json_schema.schema,
            chat.response_format.json_schema.strict) == ("thing", schema, True)
    tool = chat.tools[0].function
    assert (tool.name, tool.description, tool.parameters, tool.strict) == ("weather", "d", {"type": "object"}, True)
    assert isinstance(chat.tool_choice, NamedToolChoice) and chat.tool_choice.function.name == "weather"
    assert chat.parallel_tool_calls is False and chat.logprobs is True and chat.top_logprobs == 3
    assert to_chat(request(input="x", tool_choice="required"), []).chat.tool_choice == "required"
    assert to_chat(request(input="x", text={"format": {"type": "json_object"}}), []).chat.response_format


@pytest.mark.parametrize("fields,param", [
    ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input[0].content[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]}, "input[0].content[0].text"),
    ({"input": [{"role": "robot", "content": "hi"}]}, "input[0].role"),
    ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type"),
    # a missing field is named itself, not only the item without it
    ({"input": [{"role": "user", "content": "a"}, {"type": "function_call", "name": "f"}]}, "input[1].call_id"),
    ({"input": [{"role": "user"}]}, "input[0].content"),
    ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input[0].content[0].text"),
    # a tool result for no call made before it
    ({"input": [{"role": "user", "content": "a"}, {"type": "function_call_output", "call_id": "c9", "output": "x"}]},
     "input[1].call_id"),
    ({"input": [{"type": "function_call_output", "call_id": "c1", "output": "x"},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
    ({"input": [{"role": "assistant", "content": [{"type": "input_image", "image_url": DATA_URI}]}]},
     "input[0].content[0]"),
    ({"input": "x", "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice.name"),
    ({}, "input"),
])
def test_client_mistakes_name_the_parameter(fields, param) -> None:
    with pytest.raises(InvalidRequest) as err:
        to_chat(request(**fields), [])
    assert err.value.param == param and err.value.status == 400


def test_an_orphan_tool_result_is_refused_as_openai_does() -> None:
    with pytest.raises(InvalidRequest) as err:
        to_chat(request(input=[{"type": "function_call_output", "call_id": "c9", "output": "x"}]), [])
    assert err.value.message == "No tool call found for function call output with call_id c9."


def test_tool_results_may_answer_calls_of_the_conversation() -> None:
    """Calls made in the input (a cut-off one too, though it is left out), in the stored conversation, or
    by the previous response (``called``: those cut off are not in its conversation) all have results."""
    output = {"type": "function_call_output", "output": "x"}
    cut = {"type": "function_call", "call_id": "c2", "name": "f", "arguments": '{"a": 1', "status": "incomplete"}
    out = to_chat(request(input=[{"role": "user", "content": "a"}, cut, {**output, "call_id": "c2"},
                                 {**output, "call_id": "c1"}, {**output, "call_id": "c3"}]),
                  [ChatMessage("assistant", None, tool_calls=[ToolCall("c1", FunctionCall("f", "{}"))])], ["c3"])
    assert [m.tool_call_id for m in out.chat.messages if m.role == "tool"] == ["c2", "c1", "c3"]
    assert all(not m.tool_calls or m.tool_calls[0].id == "c1" for m in out.chat.messages)  # the cut one: left out


@pytest.mark.parametrize("field,value,instead", [("max_tokens", 5, "max_output_tokens"),
                                                 ("response_format", {"type": "json_object"}, "text.format")])
def test_chat_fields_are_refused_not_ignored(field, value, instead) -> None:
    with pytest.raises(InvalidRequest) as err:
        to_chat(request(input="x", **{field: value}), [])
    assert (err.value.param, err.value.code) == (field, "unknown_parameter") and instead in err.value.message
    assert to_chat(request(input="x", max_tokens=None, modalities=["text"]), []).chat.max_completion_tokens is None


def test_pipeline_errors_are_renamed_to_responses_parameters() -> None:
    out = to_chat(request(instructions="sys", input=[
        {"role": "user", "content": "one"},
        {"role": "user", "content": [{"type": "input_text", "text": "two"},
                                     {"type": "input_image", "file_id": "file-x"}]},
    ]), [ChatMessage("user", "earlier"), ChatMessage("assistant", "reply")])
    cases = {
        "messages[4].content[1].image_url": "input[1].content[1].file_id",  # 1 instructions + 2 history
        "messages[3]": "input[0]",
        "messages[1].content[0].image_url": "previous_response_id",
        "messages[0]": "instructions",
        "messages": "input",
        "response_format.json_schema.schema": "text.format.schema",
        "max_completion_tokens": "max_output_tokens",
        "model": "model",
    }
    for chat_param, expected in cases.items():
        with pytest.raises(ImageError) as err, renamed(out.params):
            raise ImageError("bad", param=chat_param)
        assert err.value.param == expected


def test_truncation_drops_whole_turns_and_keeps_naming_the_client_fields() -> None:
    out = to_chat(request(instructions="sys", truncation="auto", input=[
        {"role": "developer", "content": "house rules"},
        {"role": "user", "content": "first"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
        {"role": "assistant", "content": "It is 42."},
        {"role": "user", "content": [{"type": "input_text", "text": "second"},
                                     {"type": "input_image", "image_url": DATA_URI}]},
        {"role": "assistant", "content": "A picture."},
        {"role": "user", "content": "third"},
    ]), [])
    shorter = without_oldest_turn(out)
    assert shorter is not None and shorter.history == out.history  # the stored conversation keeps it all
    assert [(m.role, m.content if isinstance(m.content, str) else "parts") for m in shorter.chat.messages] == [
        ("system", "sys"), ("developer", "house rules"), ("user", "parts"), ("assistant", "A picture."),
        ("user", "third")]  # the first turn went whole: its call, the call's result and the answer
    for chat_param, expected in {"messages[2].content[1].image_url": "input[5].content[1].image_url",
                                 "messages[4]": "input[7]", "messages[1]": "input[0]",
                                 "messages[0]": "instructions", "messages": "input"}.items():
        with pytest.raises(ImageError) as err, renamed(shorter.params):
            raise ImageError("bad", param=chat_param)
        assert err.value.param == expected
    last = without_oldest_turn(shorter)
    assert last is not None and [m.content for m in last.chat.messages] == ["sys", "house rules", "third"]
    assert without_oldest_turn(last) is None  # the last turn is never dropped
    assert out.chat.messages[2].content == "first"  # the request it came from is unchanged


def built(chunks: list[ChatCompletionChunk], **fields) -> ResponseObject:
    """An unstreamed response: the stream's builder over the chat chunks, its events dropped (``run.whole``)."""
    out = OutputBuilder(base_response(request(input="x", **fields)))
    for c in chunks:
        out.take(c)
    out.finish()
    return out.response()


USAGE = Usage(10, 3, 13, PromptTokensDetails(cached_tokens=4, image_tokens=5))
CALL_A = ToolCallDelta(0, id="call_a", type="function", function=FunctionCallDelta("weather", '{"city":"Paris"}'))


def test_finished_response_validates_with_the_sdk() -> None:
    response = built([chunk(""), chunk("Hi"), chunk(" there", finish="stop"), chunk(usage=USAGE)],
                     metadata={"k": "v"}, max_output_tokens=9)
    sdk = Response.model_validate_json(msgspec.json.encode(response))
    assert sdk.output_text == "Hi there" and sdk.status == "completed" and sdk.id.startswith("resp_")
    assert sdk.output[0].id.startswith("msg_") and sdk.metadata == {"k": "v"} and sdk.max_output_tokens == 9
    usage = sdk.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (10, 3, 13)
    assert usage.input_tokens_details.cached_tokens == 4 and usage.output_tokens_details.reasoning_tokens == 0


def test_tool_calls_become_function_call_items() -> None:
    response = built([chunk(""), chunk(calls=[CALL_A]), chunk(finish="tool_calls"), chunk(usage=USAGE)])
    sdk = Response.model_validate_json(msgspec.json.encode(response))
    [item] = sdk.output
    assert item.type == "function_call" and item.id.startswith("fc_")
    assert (item.call_id, item.name, item.arguments, item.status) == ("call_a", "weather", '{"city":"Paris"}',
                                                                      "completed")
    # and back: the stored turn a follow-up continues
    calls = [ToolCall("call_a", FunctionCall("weather", '{"city":"Paris"}'))]
    assert output_messages(response.output) == [ChatMessage("assistant", None, tool_calls=calls)]
    both = built([chunk(""), chunk("Let me look."), chunk(calls=[CALL_A]), chunk(finish="tool_calls")])
    assert [i.type for i in Response.model_validate_json(msgspec.json.encode(both)).output] == [
        "message", "function_call"]


def test_length_is_incomplete() -> None:
    response = built([chunk(""), chunk("Hi", finish="length"), chunk(usage=USAGE)])
    sdk = Response.model_validate_json(msgspec.json.encode(response))
    assert sdk.status == "incomplete" and sdk.incomplete_details.reason == "max_output_tokens"
    assert sdk.output[0].status == "incomplete"


def test_a_length_cut_marks_only_the_item_it_cut() -> None:
    """Items in the order written; the token limit cut the last one, unless that is a call whose arguments
    had already ended (it can be made)."""
    then_text = built([chunk(""), chunk(calls=[CALL_A]), chunk("Then more", finish="length")])
    assert [(type(i).__name__, i.status) for i in then_text.output] == [
        ("OutputFunctionCall", "completed"), ("OutputMessage", "incomplete")]
    whole = built([chunk(""), chunk("Let me look."), chunk(calls=[CALL_A]), chunk(finish="length")])
    assert whole.status == "incomplete" and [(type(i).__name__, i.status) for i in whole.output] == [
        ("OutputMessage", "completed"), ("OutputFunctionCall", "completed")]
    cut = ToolCallDelta(0, id="call_a", type="function", function=FunctionCallDelta("weather", '{"city": "Pa'))
    half = built([chunk(""), chunk(calls=[cut]), chunk(finish="length")])
    assert [(type(i).__name__, i.status) for i in half.output] == [("OutputFunctionCall", "incomplete")]


# --- streaming --------------------------------------------------------------------------------

def chunk(content: str | None = None, calls: list[ToolCallDelta] | None = None, finish: str | None = None,
          usage: Usage | None = None) -> ChatCompletionChunk:
    choices = [] if usage else [ChunkChoice(0, Delta(content=content, tool_calls=calls), finish)]
    extra = {"usage": usage} if usage else {}
    return ChatCompletionChunk("chatcmpl-1", 0, "m", choices, **extra)


TOOL_CHUNKS = [
    chunk(""),  # chat_chunks' role chunk
    chunk("Let me check."),
    chunk(calls=[ToolCallDelta(0, id="call_a", type="function", function=FunctionCallDelta("weather", ""))]),
    chunk(calls=[ToolCallDelta(0, function=FunctionCallDelta(arguments='{"city":'))]),
    chunk(calls=[ToolCallDelta(0, function=FunctionCallDelta(arguments='"Paris"}'))]),
    chunk(calls=[ToolCallDelta(1, id="call_b", type="function", function=FunctionCallDelta("time", "{}"))]),
    chunk(finish="tool_calls"),
    chunk(usage=Usage(10, 5, 15)),
]


async def collect(chunks: list[ChatCompletionChunk], stored: list) -> list[dict]:
    async def source() -> AsyncIterator[ChatCompletionChunk]:
        for c in chunks:
            yield c

    async def done(response) -> None:
        stored.append(response)

    base = base_response(request(input="x", tools=[{"type": "function", "name": "weather"},
                                                   {"type": "function", "name": "time"}]))
    raw = [e async for e in response_events(base, source(), {}, done)]
    events = []
    for line in raw:
        kind, data = line.decode().removesuffix("\n\n").split("\n")
        event = msgspec.json.decode(data[len("data: "):])
        assert kind == f"event: {event['type']}"
        events.append(event)
    return events


def sdk_replay(events: list[dict]) -> Response:
    """The SDK's own stream accumulator (what ``client.responses.stream`` runs), fed our events."""
    state = ResponseStreamState(input_tools=openai.omit, text_format=openai.omit)
    for event in events:
        state.handle_event(construct_type(type_=ResponseStreamEvent, value=event))
    assert state._completed_response is not None
    return state._completed_response


async def test_streamed_tool_calls_event_sequence() -> None:
    stored: list = []
    events = await collect(TOOL_CHUNKS, stored)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]
    added = events[8]["item"]
    assert (added["type"], added["call_id"], added["name"], added["status"]) == (
        "function_call", "call_a", "weather", "in_progress")
    assert events[11]["arguments"] == '{"city":"Paris"}' and events[11]["item_id"] == added["id"]
    final = sdk_replay(events)
    assert final.output_text == "Let me check."
    calls = [(i.call_id, i.name, i.arguments) for i in final.output if i.type == "function_call"]
    assert calls == [("call_a", "weather", '{"city":"Paris"}'), ("call_b", "time", "{}")]
    assert final.usage.total_tokens == 15 and stored[0].id == final.id


async def test_streamed_length_is_incomplete_and_empty_answer_still_has_a_message() -> None:
    events = await collect([chunk(""), chunk("Hi", finish="length"), chunk(usage=Usage(3, 1, 4))], [])
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-2]["item"]["status"] == "incomplete"
    empty = await collect([chunk(""), chunk(finish="stop"), chunk(usage=Usage(3, 0, 3))], [])
    assert [e["type"] for e in empty][2:] == [
        "response.output_item.added", "response.content_part.added", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert sdk_replay(empty).output_text == ""


def test_builder_output_matches_unstreamed_conversion() -> None:
    out = OutputBuilder(base_response(request(input="x")))
    for c in TOOL_CHUNKS:
        out.take(c)
    out.finish()
    response = out.response()
    assert [type(i).__name__ for i in response.output] == ["OutputMessage", "OutputFunctionCall",
                                                           "OutputFunctionCall"]
    assert output_messages(response.output)[0].tool_calls[0].function.arguments == '{"city":"Paris"}'
