"""ToolCallStream: streamed deltas add up to parse_tool_calls on the whole text, for any split."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.gateway.tools.conftest import TOOLS, fmt
from vlm_gateway.schemas.openai import ToolCallDelta
from vlm_gateway.tools import StreamPiece, ToolCallStream, ToolFormat, parse_tool_calls
from vlm_gateway.tools.plan import NAMED_FORMAT, REQUIRED_FORMAT

HERMES_TEXTS = [
    "",
    "Plain answer with <b>tags</b> and a < sign.\n",
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par\\"is"}}\n</tool_call>\n'
    '<tool_call>{"name": "click", "arguments": {"x": 1, "y": 2}}</tool_call>\nDone. ',
    '<tool_call>{"name": "nope", "arguments": {}}</tool_call> <tool_call>{"name": "screenshot"}</tool_call>',
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}',
    "a <tool_ca b </tool_call> <tool_call",
    '  <tool_call>{"name": "screenshot"}</tool_call>  \n',
    # a forgotten end marker, a start marker in prose, an end marker inside a string argument
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n<tool_call>\n'
    '{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>',
    'Use the <tool_call> tag like this. <tool_call>\n{"name": "screenshot", "arguments": {}}\n</tool_call>',
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "a</tool_call>b"}}\n</tool_call>',
    '<tool_call>{"name": "click", "arguments": {"x": 1}\n</tool_call> <tool_call>{"name": "screenshot"}',
]
JSON_TEXTS = [
    "",
    "   ",
    "Hello {not a call}",
    '{"name": "get_weather", "parameters": {"city": "Paris"}}',
    '<|python_start|><|python_end|>{"name": "get_weather", "parameters": {"city": "P{a}r\\"is"}}'
    '{"name": "click", "parameters": {"x": 1, "y": 2}};  {"name": "screenshot"}\n\nThat is all.',
    '\n {"name": "get_weather", "parameters": {"city": "Paris"}} {"name": "nope"} tail',
    '{"name": "get_weather", "parameters": {"city": "Paris"',
    "<|python_start|>text<|python_end|>",
    '```json\n{"name": "screenshot"}\n```',
    "```python\nx = {}\n```",
    "``",
]
FORCED_TEXTS = [
    '[{"name":"get_weather","parameters":{"city":"Paris"}},{"name":"screenshot","parameters":{}}]',
    '[{"name":"get_weather","parameters":{"city":"Par',
    '{"city": "Paris"}',
    "not json",
]

CASES = ([("qwen2_5_vl", t) for t in HERMES_TEXTS] + [("llama4", t) for t in JSON_TEXTS]
         + [("gemma3", t) for t in JSON_TEXTS] + [("required", t) for t in FORCED_TEXTS]
         + [("named", t) for t in FORCED_TEXTS])


def _format(name: str) -> tuple[ToolFormat, list]:
    if name == "required":
        return REQUIRED_FORMAT, TOOLS
    if name == "named":
        return NAMED_FORMAT, TOOLS[:1]
    return fmt(name), TOOLS


def merge(pieces: list[StreamPiece]) -> tuple[str, list[tuple[int, str, str, str]]]:
    """Content joined, and calls rebuilt from deltas the way an OpenAI client does."""
    content = "".join(p.content for p in pieces)
    calls: dict[int, list[str]] = {}
    for delta in (d for p in pieces for d in p.calls):
        if delta.index not in calls:
            assert delta.id and delta.type == "function" and delta.function.name and delta.function.arguments == ""
            calls[delta.index] = [delta.id, delta.function.name, ""]
        else:
            assert delta.id is None and delta.type is None and delta.function.name is None
            calls[delta.index][2] += delta.function.arguments
    assert sorted(calls) == list(range(len(calls)))
    return content, [(i, *calls[i]) for i in sorted(calls)]


def streamed(fmt_: ToolFormat, tools: list, chunks: list[str]) -> tuple[str | None, list[tuple[str, str]]]:
    stream = ToolCallStream(fmt_, tools)
    pieces = [stream.feed(chunk) for chunk in chunks] + [stream.finish()]
    content, calls = merge(pieces)
    assert [c[1] for c in calls] == [c.id for c in stream.calls]
    return (None if calls and not content else content), [(name, args) for _, _, name, args in calls]


def whole(fmt_: ToolFormat, tools: list, text: str) -> tuple[str | None, list[tuple[str, str]]]:
    parsed = parse_tool_calls(fmt_, text, tools)
    return parsed.content, [(c.function.name, c.function.arguments) for c in parsed.calls]


@pytest.mark.parametrize(("name", "text"), CASES)
def test_every_split_point(name: str, text: str) -> None:
    fmt_, tools = _format(name)
    expected = whole(fmt_, tools, text)
    assert streamed(fmt_, tools, [text]) == expected
    assert streamed(fmt_, tools, list(text)) == expected  # one character at a time
    for i in range(len(text) + 1):
        assert streamed(fmt_, tools, [text[:i], text[i:]]) == expected, i
        for j in range(i, len(text) + 1, 7):
            assert streamed(fmt_, tools, [text[:i], text[i:j], text[j:]]) == expected, (i, j)


FRAGMENTS = {
    "qwen2_5_vl": ["<tool_call>", "</tool_call>", '{"name": "get_weather", "arguments": {"city": "Paris"}}',
                   '{"name": "screenshot"}', '{"name": "x"}', "{", "}", '"', "\n", " ", "Hi", "<", "/", "tool",
                   "<tool_", '{"name": "get_weather", "arguments": {"city": "a</tool_call>b"}}', "\\", "</tool_"],
    "llama4": ['{"name": "get_weather", "parameters": {"city": "P}"}}', '{"name": "screenshot"}', "<|python_start|>",
               "<|python_end|>", ";", "{", "}", '"', "\\", "\n", " ", "ok", "<|python", "{\"name\": "],
    "gemma3": ["```json", "```", "`", '{"name": "screenshot"}', "\n", " ", "text", "{", "}", '"'],
}


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_random_texts_and_splits(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(FRAGMENTS)))
    parts = data.draw(st.lists(st.sampled_from(FRAGMENTS[name]) | st.text(max_size=3), max_size=12))
    text = "".join(parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6)))
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    fmt_ = fmt(name)
    assert streamed(fmt_, TOOLS, chunks) == whole(fmt_, TOOLS, text)


def test_delta_shape(hermes: ToolFormat) -> None:
    stream = ToolCallStream(hermes, TOOLS)
    piece = stream.feed('Hi <tool_call>{"name": "click", "arguments": {"x": 1, "y": 2}}</tool_call>')
    assert piece.content == "Hi"
    first, second = piece.calls
    assert first == ToolCallDelta(index=0, id=stream.calls[0].id, type="function",
                                  function=first.function)
    assert (first.function.name, first.function.arguments) == ("click", "")
    assert second.index == 0 and second.id is None and second.function.arguments == '{"x":1,"y":2}'
    piece = stream.feed('<tool_call>{"name": "screenshot"}</tool_call>')
    assert [d.index for d in piece.calls] == [1, 1] and piece.content == ""
    assert stream.finish() == StreamPiece(content="", calls=[])


def test_text_that_may_start_a_marker_is_held_then_flushed(hermes: ToolFormat) -> None:
    stream = ToolCallStream(hermes, TOOLS)
    assert stream.feed("Hello <tool_").content == "Hello"  # " <tool_" held
    assert stream.feed("box>").content == " <tool_box>"
    assert stream.feed(" <tool_c").content == ""
    assert stream.finish().content == " <tool_c"


def test_a_start_marker_in_prose_does_not_hold_the_text_back(hermes: ToolFormat) -> None:
    """Known to be text as soon as something other than an object follows it."""
    stream = ToolCallStream(hermes, TOOLS)
    assert stream.feed("Wrap calls in <tool_call>").content == "Wrap calls in"
    assert stream.feed("\n tags. Here is").content == " <tool_call>\n tags. Here is"
    assert stream.feed(" more. <tool_call>{\"name\": \"screenshot\"").content == " more."
    assert stream.feed("}\n").calls == []  # the end marker may follow
    piece = stream.feed("</tool_call>")
    assert [d.function.name for d in piece.calls] == ["screenshot", None]
    broken = ToolCallStream(hermes, TOOLS)  # a missing brace: text once it cannot be JSON
    block = '<tool_call>{"name": "click", "arguments": {"x": 1}'
    assert broken.feed(block).content == ""
    assert broken.feed("\n</tool_call> next").content == block + "\n</tool_call> next"


def test_json_output_is_held_until_it_is_known(llama4: ToolFormat) -> None:
    stream = ToolCallStream(llama4, TOOLS)
    assert stream.feed('{"name": "screenshot", "parameters": {').content == ""
    piece = stream.feed("}}")
    assert piece.content == "" and piece.calls[0].function.name == "screenshot"
    assert stream.feed(" Then text").content == "Then text"
    plain = ToolCallStream(llama4, TOOLS)
    assert plain.feed("The answer").content == "The answer"  # not JSON: streamed at once


def test_misuse_is_an_error(hermes: ToolFormat) -> None:
    stream = ToolCallStream(hermes, TOOLS)
    stream.finish()
    with pytest.raises(RuntimeError):
        stream.feed("x")
    with pytest.raises(RuntimeError):
        stream.finish()
