"""plan_tools: tool_choice → prompt tools, structured output and how the output is parsed."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tests.gateway.tools.conftest import CLICK, SCREENSHOT, TOOLS, WEATHER, fmt
from vlm_gateway.errors import InvalidRequest
from vlm_gateway.schemas.openai import FunctionDef, FunctionName, NamedToolChoice, Tool
from vlm_gateway.tools import ParsedOutput, ToolCallStream, parse_tool_calls, plan_tools
from vlm_gateway.tools.plan import NAMED_FORMAT, NO_PARAMETERS, REQUIRED_FORMAT


def named(name: str) -> NamedToolChoice:
    return NamedToolChoice(FunctionName(name))


def test_defaults_follow_openai() -> None:
    plan = plan_tools(None, None)
    assert (plan.mode, plan.prompt_tools, plan.tools, plan.structured_outputs) == ("none", None, [], None)
    plan = plan_tools(TOOLS, None)
    assert (plan.mode, plan.prompt_tools, plan.tools, plan.structured_outputs) == ("auto", TOOLS, TOOLS, None)
    assert plan_tools([], "auto").mode == "none"


def test_none_renders_and_parses_nothing() -> None:
    plan = plan_tools(TOOLS, "none")
    assert plan.prompt_tools is None and plan.structured_outputs is None
    assert plan.output_format(fmt("qwen2_5_vl")) is None


def test_auto_parses_in_the_family_syntax() -> None:
    plan = plan_tools(TOOLS, "auto")
    assert plan.output_format(fmt("llama4")) == fmt("llama4")
    assert plan.output_format(None) is None


def test_required_schema() -> None:
    plan = plan_tools([WEATHER, SCREENSHOT], "required")
    assert plan.mode == "required" and plan.prompt_tools == [WEATHER, SCREENSHOT]
    assert plan.output_format(fmt("gemma3")) is REQUIRED_FORMAT
    assert plan.structured_outputs == {"json": {
        "type": "array",
        "items": {"anyOf": [
            {"type": "object", "properties": {"name": {"type": "string", "enum": ["get_weather"]},
                                              "parameters": {"$ref": "#/$defs/__tool_0_parameters"}},
             "required": ["name", "parameters"]},
            {"type": "object", "properties": {"name": {"type": "string", "enum": ["screenshot"]},
                                              "parameters": {"$ref": "#/$defs/__tool_1_parameters"}},
             "required": ["name", "parameters"]},
        ]},
        "minItems": 1,
        "$defs": {"__tool_0_parameters": WEATHER.function.parameters, "__tool_1_parameters": NO_PARAMETERS},
    }, "disable_any_whitespace": True}


def test_required_schema_keeps_the_tools_defs_where_their_refs_look() -> None:
    """``openai.pydantic_function_tool`` of a nested model: ``$ref: "#/$defs/Address"``, resolved from the
    schema's root, where the tools' ``$defs`` go."""
    address = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    ship = Tool(FunctionDef("ship", parameters={"type": "object", "properties": {"to": {"$ref": "#/$defs/Address"}},
                                                "required": ["to"], "$defs": {"Address": address}}))
    bill = Tool(FunctionDef("bill", parameters={"type": "object", "properties": {"to": {"$ref": "#/$defs/Address"}},
                                                "$defs": {"Address": address}}))
    schema = plan_tools([ship, bill, WEATHER], "required").structured_outputs["json"]
    assert schema["$defs"]["Address"] == address
    assert all("$defs" not in schema["$defs"][f"__tool_{i}_parameters"] for i in range(3))
    jsonschema.Draft202012Validator.check_schema(schema)
    valid = [{"name": "ship", "parameters": {"to": {"city": "Paris"}}}]
    jsonschema.validate(valid, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "ship", "parameters": {"to": {"town": 5}}}], schema)
    other = Tool(FunctionDef("other", parameters={"type": "object", "$defs": {"Address": {"type": "string"}}}))
    with pytest.raises(InvalidRequest) as clash:
        plan_tools([ship, other], "required")
    assert clash.value.param == "tools[1].function.parameters"


def test_one_call_without_parallel_calls() -> None:
    assert plan_tools(TOOLS, "required", False).structured_outputs["json"]["maxItems"] == 1
    assert "maxItems" not in plan_tools(TOOLS, "required", True, family_format=fmt("llama4")).structured_outputs["json"]
    # a family whose template takes one call per turn
    assert plan_tools(TOOLS, "required", True, family_format=fmt("llama3_2_vision")).structured_outputs["json"][
        "maxItems"] == 1


def test_named_function() -> None:
    plan = plan_tools(TOOLS, named("click"))
    assert plan.mode == "named" and plan.prompt_tools == TOOLS and plan.tools == [CLICK]
    assert plan.structured_outputs == {"json": CLICK.function.parameters, "disable_any_whitespace": True}
    assert plan.output_format(fmt("qwen2_5_vl")) is NAMED_FORMAT
    assert plan_tools(TOOLS, named("screenshot")).structured_outputs["json"] == {"type": "object", "properties": {}}


@pytest.mark.parametrize("choice", ["required", named("click")])
def test_forcing_without_tools_is_refused(choice) -> None:
    for tools in (None, []):
        with pytest.raises(InvalidRequest) as refused:
            plan_tools(tools, choice)
        assert refused.value.param == "tool_choice" and refused.value.status == 400


def test_unknown_named_function_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="'nope'.*get_weather, click, screenshot") as refused:
        plan_tools(TOOLS, named("nope"))
    assert refused.value.param == "tool_choice"


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="used twice") as refused:
        plan_tools([WEATHER, CLICK, Tool(FunctionDef("click"))], "auto")
    assert refused.value.param == "tools[2].function.name"


# --- parsing forced output ---------------------------------------------------------------------------

def test_required_output_parses_to_calls() -> None:
    plan = plan_tools(TOOLS, "required")
    text = '[{"name": "get_weather", "parameters": {"city": "Paris"}},{"name":"screenshot","parameters":{}}]'
    parsed = parse_tool_calls(plan.output_format(None), text, plan.tools)
    assert parsed.content is None
    assert [(c.function.name, c.function.arguments) for c in parsed.calls] == [
        ("get_weather", '{"city":"Paris"}'), ("screenshot", "{}")]


def test_named_output_parses_to_one_call() -> None:
    plan = plan_tools(TOOLS, named("click"))
    parsed = parse_tool_calls(plan.output_format(None), '{"x": 3, "y": 4}', plan.tools)
    assert parsed.content is None
    assert [(c.function.name, c.function.arguments) for c in parsed.calls] == [("click", '{"x":3,"y":4}')]


@pytest.mark.parametrize("text", ['[{"name": "get_weather", "parameters": {"city": "Pa', "[]", '[{"name": "nope", '
                                  '"parameters": {}}]', '{"name": "get_weather"}', ""])
def test_broken_required_output_is_text(text: str) -> None:
    plan = plan_tools(TOOLS, "required")
    assert parse_tool_calls(plan.output_format(None), text, plan.tools) == ParsedOutput(content=text, calls=[])


def test_broken_named_output_is_text() -> None:
    plan = plan_tools(TOOLS, named("click"))
    for text in ['{"x": 3, "y"', "[1]", ""]:
        assert parse_tool_calls(plan.output_format(None), text, plan.tools) == ParsedOutput(content=text, calls=[])


def test_forced_stream_releases_calls_at_the_end() -> None:
    plan = plan_tools(TOOLS, named("click"))
    stream = ToolCallStream(plan.output_format(None), plan.tools)
    assert stream.feed('{"x": 3,').calls == [] and stream.feed(' "y": 4}').content == ""
    piece = stream.finish()
    assert piece.content == "" and [d.index for d in piece.calls] == [0, 0]


# --- the schemas are ones xgrammar compiles, and they accept the outputs we parse -------------------

def _schemas() -> list[tuple[str, dict, list[str], list[str]]]:
    """(label, schema, outputs it must accept, outputs it must reject)."""
    required = plan_tools(TOOLS, "required").structured_outputs["json"]
    single = plan_tools(TOOLS, "required", False).structured_outputs["json"]
    click = plan_tools(TOOLS, named("click")).structured_outputs["json"]
    empty = plan_tools(TOOLS, named("screenshot")).structured_outputs["json"]
    one = '[{"name":"get_weather","parameters":{"city":"Paris"}}]'
    two = '[{"name":"screenshot","parameters":{}},{"name":"click","parameters":{"x":1,"y":2}}]'
    return [
        ("required", required, [one, two], ["[]", '[{"name":"screenshot","parameters":{"x":1}}]',
                                             '[{"name":"click","parameters":{"city":"Paris"}}]']),
        ("required-single", single, [one], [two]),
        ("named", click, ['{"x":1,"y":2}'], ['{"x":1}', "[]"]),
        ("named-no-parameters", empty, ["{}"], ['{"a":1}']),
    ]


@pytest.mark.parametrize(("label", "schema", "good", "bad"), _schemas(), ids=[s[0] for s in _schemas()])
def test_schemas_accept_what_we_parse(label: str, schema: dict, good: list[str], bad: list[str]) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)
    for text in good:
        jsonschema.validate(json.loads(text), schema)
        fmt_ = REQUIRED_FORMAT if label.startswith("required") else NAMED_FORMAT
        tools = TOOLS if fmt_ is REQUIRED_FORMAT else [CLICK if "x" in text else SCREENSHOT]
        assert parse_tool_calls(fmt_, text, tools).calls
    xgrammar = pytest.importorskip("xgrammar")
    from xgrammar.testing import _is_grammar_accept_string

    # as vLLM compiles structured_outputs {"json": ..., "disable_any_whitespace": true}
    grammar = xgrammar.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False, separators=(",", ":"))
    for text in good:
        assert _is_grammar_accept_string(grammar, text) or _is_grammar_accept_string(
            grammar, json.dumps(json.loads(text))), text
    for text in bad:
        assert not _is_grammar_accept_string(grammar, text), text


# --- a tool's schema keeps its meaning inside the required-mode array -------------------------------

TREE = Tool(FunctionDef("make_tree", parameters={"type": "object", "properties": {
    "label": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#"}}},
    "required": ["label", "children"], "default": {"$ref": "#"}}))
PAIR = Tool(FunctionDef("pair", parameters={"type": "object", "properties": {
    "a": {"type": "integer"}, "b": {"$ref": "#/properties/a"}}, "required": ["a", "b"]}))


def _grammar(schema: dict):
    xgrammar = pytest.importorskip("xgrammar")
    from xgrammar.testing import _is_grammar_accept_string

    # as vLLM compiles structured_outputs {"json": ..., "disable_any_whitespace": true}
    grammar = xgrammar.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False, separators=(",", ":"))
    return lambda text: _is_grammar_accept_string(grammar, text)


def test_required_schema_keeps_refs_to_the_tools_own_root() -> None:
    """``"$ref": "#"`` (a recursive tree) and ``#/properties/a`` mean the tool's parameters schema, not
    the array of calls it is nested in; data (``default``) is not rewritten."""
    schema = plan_tools([WEATHER, TREE, PAIR], "required").structured_outputs["json"]
    assert schema["$defs"]["__tool_1_parameters"]["default"] == {"$ref": "#"}
    tree = '[{"name":"make_tree","parameters":{"label":"a","children":[{"label":"b","children":[]}]}}]'
    nonsense = ('[{"name":"make_tree","parameters":{"label":"a","children":[[{"name":"make_tree",'
                '"parameters":{"label":"b","children":[]}}]]}}]')
    pair, bad_pair = '[{"name":"pair","parameters":{"a":1,"b":2}}]', '[{"name":"pair","parameters":{"a":1,"b":"x"}}]'
    jsonschema.Draft202012Validator.check_schema(schema)
    for good in (tree, pair):
        jsonschema.validate(json.loads(good), schema)
    for bad in (nonsense, bad_pair):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(json.loads(bad), schema)
    accepts = _grammar(schema)  # compiles: "#/properties/a" made xgrammar refuse the whole request
    assert accepts(tree) and accepts(pair)
    assert not accepts(nonsense) and not accepts(bad_pair)
    parsed = parse_tool_calls(REQUIRED_FORMAT, tree, [TREE])
    assert json.loads(parsed.calls[0].function.arguments)["children"] == [{"label": "b", "children": []}]


def test_definitions_that_refer_to_their_tools_root_are_rerooted_too() -> None:
    node = {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}, "root": {"$ref": "#"}}}
    tool = Tool(FunctionDef("walk", parameters={"type": "object", "properties": {"n": {"$ref": "#/$defs/Node"}},
                                                "$defs": {"Node": node}}))
    schema = plan_tools([tool], "required").structured_outputs["json"]
    assert schema["$defs"]["Node"]["properties"] == {"next": {"$ref": "#/$defs/Node"},
                                                     "root": {"$ref": "#/$defs/__tool_0_parameters"}}
    jsonschema.validate([{"name": "walk", "parameters": {"n": {"root": {"n": {}}}}}], schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "walk", "parameters": {"n": {"root": {"n": 5}}}}], schema)


def test_properties_named_like_keywords_are_rerooted_too() -> None:
    """A property called ``default`` (or ``enum``) is a schema, not the keyword's data."""
    tree = {"type": "object", "properties": {"default": {"type": "array", "items": {"$ref": "#"}},
                                             "$ref": {"$ref": "#"}}}
    schema = plan_tools([Tool(FunctionDef("t", parameters=tree))], "required").structured_outputs["json"]
    props = schema["$defs"]["__tool_0_parameters"]["properties"]
    assert props["default"]["items"] == props["$ref"] == {"$ref": "#/$defs/__tool_0_parameters"}


# --- parameters are an object's schema ---------------------------------------------------------------

@pytest.mark.parametrize("choice", ["none", "auto", "required", named("say")])
def test_parameters_that_are_no_object_schema_are_refused(choice) -> None:
    """OpenAI requires an object schema; forced, ``{"type": "string"}`` would make the model write a
    string, which is no call and came back as plain content."""
    for kind in ("string", "array", ["object", "null"]):
        say = Tool(FunctionDef("say", parameters={"type": kind}))
        with pytest.raises(InvalidRequest, match="type \"object\"") as refused:
            plan_tools([WEATHER, say], choice)
        assert refused.value.param == "tools[1].function.parameters" and refused.value.status == 400


def test_parameters_without_a_type_are_forced_as_an_object() -> None:
    ping = Tool(FunctionDef("ping", parameters={}))
    note = Tool(FunctionDef("note", parameters={"properties": {"text": {"type": "string"}}}))
    assert plan_tools([ping], "auto").prompt_tools == [ping]  # the prompt shows what the client sent
    named_schema = plan_tools([ping, note], named("note")).structured_outputs["json"]
    assert named_schema == {"type": "object", "properties": {"text": {"type": "string"}}}
    required = plan_tools([ping, note], "required").structured_outputs["json"]
    assert required["$defs"]["__tool_0_parameters"] == {"type": "object"}
    accepts = _grammar(plan_tools([ping], named("ping")).structured_outputs["json"])
    assert accepts("{}") and not accepts("[1]") and not accepts('"x"')
    assert not _grammar(required)('[{"name":"ping","parameters":"x"}]')
