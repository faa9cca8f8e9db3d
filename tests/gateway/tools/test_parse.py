"""parse_tool_calls: a complete model output → content and OpenAI tool calls, per call syntax."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.gateway.tools.conftest import TOOLS, WEATHER, fmt
from vlm_gateway.prompts.families import load_families
from vlm_gateway.tools import ParsedOutput, ToolFormat, parse_tool_calls

ID = re.compile(r"^call_[A-Za-z0-9]{24}$")
PARIS = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def calls(parsed: ParsedOutput) -> list[tuple[str, str]]:
    return [(c.function.name, c.function.arguments) for c in parsed.calls]


# --- hermes -----------------------------------------------------------------------------------------

def test_hermes_call_only(hermes: ToolFormat) -> None:
    parsed = parse_tool_calls(hermes, PARIS, TOOLS)
    assert parsed.content is None
    assert calls(parsed) == [("get_weather", '{"city":"Paris"}')]
    assert ID.match(parsed.calls[0].id) and parsed.calls[0].type == "function"


def test_ids_are_unique(hermes: ToolFormat) -> None:
    parsed = parse_tool_calls(hermes, PARIS * 20, TOOLS)
    assert len({c.id for c in parsed.calls}) == 20


def test_hermes_parallel_calls_and_text(hermes: ToolFormat) -> None:
    text = ('Let me check.\n' + PARIS + '\n<tool_call>\n{"name": "click", "arguments": {"x": 1, "y": 2}}\n'
            '</tool_call>\n\nI asked twice. \n')
    parsed = parse_tool_calls(hermes, text, TOOLS)
    assert calls(parsed) == [("get_weather", '{"city":"Paris"}'), ("click", '{"x":1,"y":2}')]
    assert parsed.content == "Let me check.\n\n\n\nI asked twice."  # text between calls kept


def test_whitespace_framing_calls_is_dropped(hermes: ToolFormat) -> None:
    parsed = parse_tool_calls(hermes, "\n\n" + PARIS + "\n" + PARIS + "\n \n", TOOLS)
    assert parsed.content is None and len(parsed.calls) == 2
    assert parse_tool_calls(hermes, "  Hi " + PARIS, TOOLS).content == "  Hi"


def test_text_without_calls_is_unchanged(hermes: ToolFormat) -> None:
    for text in ["", "  plain answer \n", "a <tool_call", "<tool_call> x", "</tool_call>", "<tool_cal"]:
        assert parse_tool_calls(hermes, text, TOOLS) == ParsedOutput(content=text, calls=[])


@pytest.mark.parametrize("block", [
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}\n</tool_call>',  # bad JSON
    '<tool_call>\n{"name": "delete_everything", "arguments": {}}\n</tool_call>',  # not offered
    '<tool_call>\n{"name": "get_weather", "arguments": [1]}\n</tool_call>',  # arguments no object
    '<tool_call>\n{"arguments": {"city": "Paris"}}\n</tool_call>',  # no name
    '<tool_call>\n["get_weather"]\n</tool_call>',
    '<tool_call>\n{"name": "get_weather", "arguments": {"t": NaN}}\n</tool_call>',  # not JSON
    '<tool_call>\n{"name": "get_weather", "arguments": {"t": -1e999}}\n</tool_call>',  # no float: Infinity
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}',  # object never closed
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}} and then text',  # no ending
    '<tool_call>\n{"name": "get_weather", "parameters": {"city": "Paris"}}\n</tool_call>',  # not its key:
    # not a call without its arguments
])
def test_malformed_calls_stay_text(hermes: ToolFormat, block: str) -> None:
    text = "Before " + block
    assert parse_tool_calls(hermes, text, TOOLS) == ParsedOutput(content=text, calls=[])
    mixed = parse_tool_calls(hermes, PARIS + block, TOOLS)
    assert calls(mixed) == [("get_weather", '{"city":"Paris"}')] and mixed.content == block


def test_only_offered_tools_count(hermes: ToolFormat) -> None:
    assert parse_tool_calls(hermes, PARIS, [TOOLS[1]]).calls == []
    assert parse_tool_calls(hermes, PARIS, []).content == PARIS


def test_arguments_are_compact_json_keeping_unicode(hermes: ToolFormat) -> None:
    text = '<tool_call>{"name":"get_weather","arguments":{ "city" : "Zürich 東京",\n "n": [1, 2.5, null] }}</tool_call>'
    (call,) = parse_tool_calls(hermes, text, TOOLS).calls
    assert call.function.arguments == '{"city":"Zürich 東京","n":[1,2.5,null]}'


def test_missing_or_quoted_arguments(hermes: ToolFormat) -> None:
    text = ('<tool_call>{"name": "screenshot"}</tool_call>'
            '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}</tool_call>')
    assert calls(parse_tool_calls(hermes, text, TOOLS)) == [("screenshot", "{}"), ("get_weather", '{"city":"Rome"}')]


def test_markers_inside_json_strings(hermes: ToolFormat) -> None:
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": "<tool_call>"}}</tool_call>'
    assert calls(parse_tool_calls(hermes, text, TOOLS)) == [("get_weather", '{"city":"<tool_call>"}')]


ROME = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'


def test_a_forgotten_end_marker_before_another_block(hermes: ToolFormat) -> None:
    """The object's braces end the call; the next start marker (or the end of output) stands in for a
    forgotten end marker."""
    forgot = PARIS.removesuffix("</tool_call>")
    parsed = parse_tool_calls(hermes, forgot + ROME, TOOLS)
    assert parsed.content is None and calls(parsed) == [("get_weather", '{"city":"Paris"}'),
                                                        ("get_weather", '{"city":"Rome"}')]
    parsed = parse_tool_calls(hermes, "Checking. " + ROME + forgot + " \n", TOOLS)
    assert parsed.content == "Checking." and [json.loads(a)["city"] for _, a in calls(parsed)] == ["Rome", "Paris"]


def test_a_start_marker_in_prose_is_text(hermes: ToolFormat) -> None:
    text = 'Use the <tool_call> tag like this. <tool_call>\n{"name": "screenshot", "arguments": {}}\n</tool_call>'
    parsed = parse_tool_calls(hermes, text, TOOLS)
    assert parsed.content == "Use the <tool_call> tag like this." and calls(parsed) == [("screenshot", "{}")]
    prose = "Wrap it in <tool_call>{...}</tool_call>, then <tool_call> " + PARIS
    parsed = parse_tool_calls(hermes, prose, TOOLS)
    assert parsed.content == "Wrap it in <tool_call>{...}</tool_call>, then <tool_call>" and len(parsed.calls) == 1


def test_an_end_marker_inside_a_string_argument(hermes: ToolFormat) -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "a</tool_call>b\\"}"}}\n</tool_call>'
    parsed = parse_tool_calls(hermes, text, TOOLS)
    assert parsed.content is None and calls(parsed) == [("get_weather", '{"city":"a</tool_call>b\\"}"}')]


def test_a_broken_block_does_not_swallow_the_next(hermes: ToolFormat) -> None:
    """A missing brace: the block is text up to where it cannot be JSON, and the next block counts."""
    broken = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}\n</tool_call>\n'
    parsed = parse_tool_calls(hermes, broken + PARIS, TOOLS)
    assert parsed.content == broken.rstrip() and calls(parsed) == [("get_weather", '{"city":"Paris"}')]


# --- json (Llama, Gemma) ---------------------------------------------------------------------------

LLAMA_CALL = '{"name": "get_weather", "parameters": {"city": "Paris"}}'


@pytest.mark.parametrize("family", ["llama4", "llama3_2_vision", "gemma3"])
def test_json_call(family: str) -> None:
    parsed = parse_tool_calls(fmt(family), LLAMA_CALL, TOOLS)
    assert parsed.content is None and calls(parsed) == [("get_weather", '{"city":"Paris"}')]


def test_json_markers_and_separators(llama4: ToolFormat) -> None:
    text = ('<|python_start|><|python_end|>' + LLAMA_CALL + '{"name": "click", "arguments": {"x": 1, "y": 2}}'
            '; {"name": "screenshot"}\n')
    parsed = parse_tool_calls(llama4, text, TOOLS)
    assert [name for name, _ in calls(parsed)] == ["get_weather", "click", "screenshot"]
    assert parsed.content is None


def test_llama3_2_python_tag() -> None:
    parsed = parse_tool_calls(fmt("llama3_2_vision"), "<|python_tag|>" + LLAMA_CALL, TOOLS)
    assert len(parsed.calls) == 1 and parsed.content is None


def test_gemma_code_fence(gemma: ToolFormat) -> None:
    parsed = parse_tool_calls(gemma, "```json\n" + LLAMA_CALL + "\n```", TOOLS)
    assert len(parsed.calls) == 1 and parsed.content is None
    fenced_code = "```python\nprint(1)\n```"
    assert parse_tool_calls(gemma, fenced_code, TOOLS).content == fenced_code


def test_json_text_after_calls(gemma: ToolFormat) -> None:
    parsed = parse_tool_calls(gemma, LLAMA_CALL + "\n\nI called the weather tool.", TOOLS)
    assert len(parsed.calls) == 1 and parsed.content == "I called the weather tool."


@pytest.mark.parametrize("text", [
    "The answer is 4.",
    "  Sure: " + LLAMA_CALL,  # a call after text is text
    '{"city": "Paris"}',  # JSON, but no call
    '{"name": "nope", "parameters": {}}',
    '{"name": "get_weather", "args": {"city": "Paris"}}',  # arguments under another key: text
    '{"name": "get_weather", "city": "Paris"}',
    '{"name": "get_weather", "parameters": {"city": "Paris"}',  # never closed
    '{"name": "get_weather", "parameters": {"city": "Par}is"}} trailing',  # braces in strings, then text
    "<|python_start|>Some text<|python_end|>",
    "",
    "\n",
])
def test_json_non_calls_stay_text(llama4: ToolFormat, text: str) -> None:
    parsed = parse_tool_calls(llama4, text, TOOLS)
    if text.startswith('{"name": "get_weather", "parameters": {"city": "Par}is"}}'):
        assert calls(parsed) == [("get_weather", '{"city":"Par}is"}')] and parsed.content == "trailing"
    else:
        assert parsed == ParsedOutput(content=text, calls=[])


def test_json_invalid_object_after_a_call_ends_the_calls(llama4: ToolFormat) -> None:
    parsed = parse_tool_calls(llama4, LLAMA_CALL + ' {"name": "nope"} ' + LLAMA_CALL, TOOLS)
    assert len(parsed.calls) == 1 and parsed.content == '{"name": "nope"} ' + LLAMA_CALL


def test_json_hermes_key_is_accepted_by_llama(llama4: ToolFormat) -> None:
    parsed = parse_tool_calls(llama4, '{"name": "get_weather", "arguments": {"city": "Oslo"}}', [WEATHER])
    assert calls(parsed) == [("get_weather", '{"city":"Oslo"}')]


def test_deep_nesting_is_text_not_a_crash(llama4: ToolFormat, hermes: ToolFormat) -> None:
    deep = '{"name": "get_weather", "parameters": ' + "[" * 100000 + "]" * 100000 + "}"
    assert parse_tool_calls(llama4, deep, TOOLS).content == deep
    assert parse_tool_calls(hermes, "<tool_call>" + deep + "</tool_call>", TOOLS).calls == []


# --- no family names in the parsing code -------------------------------------------------------------

def test_no_family_names_in_tools_code() -> None:
    package = Path(__file__).resolve().parents[3] / "vlm_gateway" / "tools"
    names = re.compile("|".join(load_families()))
    for source in package.glob("*.py"):
        assert not names.search(source.read_text(encoding="utf-8")), source.name


def test_json_is_checked_with_the_stdlib_parser() -> None:
    """Arguments round-trip through json: what a client decodes is what the model wrote."""
    parsed = parse_tool_calls(fmt("qwen2_5_vl"), '<tool_call>{"name": "click", "arguments": {"x": 1e2, "y": -0}}'
                              '</tool_call>', TOOLS)
    assert json.loads(parsed.calls[0].function.arguments) == {"x": 100.0, "y": 0}


def test_raw_control_characters_in_strings_are_taken_and_escaped() -> None:
    """A literal newline in a code argument, or a control character structured output let through:
    still the call the model wrote, and its ``arguments`` valid JSON for any client."""
    from vlm_gateway.tools.plan import NAMED_FORMAT, REQUIRED_FORMAT

    hermes_text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Par\nis"}}</tool_call>'
    required_text = '[{"name":"get_weather","parameters":{"city":":\x03eo"}}]'
    for form, text in ((fmt("qwen2_5_vl"), hermes_text), (REQUIRED_FORMAT, required_text)):
        parsed = parse_tool_calls(form, text, TOOLS)
        assert parsed.content is None and len(parsed.calls) == 1, text
        assert json.loads(parsed.calls[0].function.arguments)["city"] in ("Par\nis", ":\x03eo")
    named = parse_tool_calls(NAMED_FORMAT, '{"city": "a\tb"}', TOOLS[:1])
    assert named.calls[0].function.arguments == '{"city":"a\\tb"}'


def test_a_cut_forced_call_keeps_its_unfinished_arguments() -> None:
    from vlm_gateway.tools.plan import NAMED_FORMAT

    assert parse_tool_calls(NAMED_FORMAT, '{"city": "Par', TOOLS[:1]).calls == []  # not cut: text
    cut = parse_tool_calls(NAMED_FORMAT, '{"city": "Par', TOOLS[:1], cut=True)
    assert cut.content is None and calls(cut) == [("get_weather", '{"city": "Par')]
    whole = parse_tool_calls(NAMED_FORMAT, '{"city": "Paris"}', TOOLS[:1], cut=True)
    assert calls(whole) == [("get_weather", '{"city":"Paris"}')]  # complete before the limit: as ever
    hermes = parse_tool_calls(fmt("qwen2_5_vl"), '<tool_call>{"name": "get_weather", "arg', TOOLS, cut=True)
    assert hermes.calls == []  # the family's own syntax: an unfinished block names no call for sure


def test_tool_format_is_validated() -> None:
    import msgspec

    with pytest.raises(ValueError, match="call_start and call_end"):
        ToolFormat(parser="hermes")
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"parser": "json", "markers": []}, ToolFormat)  # unknown field
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"parser": "pythonic"}, ToolFormat)


@pytest.mark.parametrize(("form", "text", "value"), [
    ("qwen2_5_vl", '<tool_call>{"name": "get_weather", "arguments": {"city": "\\ud83d"}}</tool_call>',
     {"city": "\ud83d"}),
    ("llama4", '{"name": "get_weather", "parameters": {"\\udc00": "a\\ud83d\\ude00\\ud83d"}}',
     {"\udc00": "a\U0001f600\ud83d"}),  # a pair is one character: kept as it is
    ("required", '[{"name":"get_weather","parameters":{"city":"\\ude00\\ud83d"}}]', {"city": "\ude00\ud83d"}),
    ("named", '{"city": "x\\udfff"}', {"city": "x\udfff"}),
], ids=["hermes", "json", "required", "named"])
def test_a_lone_surrogate_escape_stays_escaped(form: str, text: str, value: dict) -> None:
    """``"\\ud83d"`` (half an emoji, written in ASCII) decodes to a lone surrogate, which UTF-8 cannot
    encode: written raw into ``arguments``, the response could not be sent at all. Escaped again, the
    arguments are valid UTF-8 JSON that decodes to what the model wrote."""
    from vlm_gateway.tools.plan import NAMED_FORMAT, REQUIRED_FORMAT

    form_ = {"required": REQUIRED_FORMAT, "named": NAMED_FORMAT}.get(form) or fmt(form)
    (call,) = parse_tool_calls(form_, text, TOOLS[:1] if form == "named" else TOOLS).calls
    assert json.loads(call.function.arguments.encode("utf-8")) == value
    assert form != "llama4" or "\U0001f600" in call.function.arguments  # other non-ASCII still kept raw


def test_numbers_too_large_for_a_float_are_no_call() -> None:
    """``1e999`` is valid JSON text but becomes ``inf``, which would go back out as ``Infinity``: not
    JSON, so no call, as ``Infinity`` written by the model is none."""
    from vlm_gateway.tools.plan import NAMED_FORMAT, REQUIRED_FORMAT

    for form, text, tools in ((fmt("qwen2_5_vl"), '<tool_call>{"name": "get_weather", "arguments": {"city": 1e999}}'
                               '</tool_call>', TOOLS),
                              (fmt("llama4"), '{"name": "click", "parameters": {"x": 1, "y": 2E+400}}', TOOLS),
                              (fmt("qwen2_5_vl"), '<tool_call>{"name": "get_weather", "arguments": "{\\"c\\": 1e999}"}'
                               '</tool_call>', TOOLS),  # quoted arguments
                              (REQUIRED_FORMAT, '[{"name":"click","parameters":{"x":-1e999,"y":0}}]', TOOLS),
                              (NAMED_FORMAT, '{"city": 1e999}', TOOLS[:1])):
        assert parse_tool_calls(form, text, tools) == ParsedOutput(content=text, calls=[]), text
    big = parse_tool_calls(NAMED_FORMAT, '{"city": 1.7e308, "n": 1' + "0" * 400 + "}", TOOLS[:1])
    assert json.loads(big.calls[0].function.arguments) == {"city": 1.7e308, "n": 10 ** 400}  # large, finite: a call
