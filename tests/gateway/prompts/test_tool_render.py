"""Tools, assistant tool calls and tool results rendered through every family's template.

- Llama 4 / Llama 3.2 Vision: the shared goldens (official templates), byte for byte where the first
  user turn is text; where it is a list of parts (an image) the documented variant (the parts written
  with the image placeholder instead of the official Python list text).
- Qwen2.5-VL and FastVLM: byte-identical to the official Qwen2.5 (text) template
  (reference_templates/) with the family's own default system text and image markers.
- Every family x every case: our committed goldens (golden_tools/, make_tool_goldens.py).
- What a family renders as a call, its parser reads back as that call.
"""

from __future__ import annotations

import importlib.util
import json
import re
from functools import cache
from pathlib import Path

import jinja2.ext
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tests.gateway.prompts.conformance import conformance_dir
from tests.gateway.prompts.make_tool_goldens import expected_files
from tests.gateway.prompts.tool_cases import (
    HERE,
    all_cases,
    case,
    case_messages,
    case_tools,
    openai_messages,
    our_golden,
    render_case,
    render_now,
    shared_golden,
    shared_spec,
)
from vlm_gateway.errors import InvalidRequest, PromptRefused
from vlm_gateway.prompts.environment import tojson
from vlm_gateway.prompts.families import get_family, load_families
from vlm_gateway.prompts.render import render_chat
from vlm_gateway.schemas.openai import ChatMessage, FunctionCall, FunctionDef, TextPart, Tool, ToolCall
from vlm_gateway.tools import parse_tool_calls

FAMILIES = sorted(load_families())
OFFICIAL_TOOL_FAMILIES = ["llama3_2_vision", "llama4"]
HERMES_REFERENCE = HERE / "reference_templates" / "qwen2_5_instruct.jinja"
QWEN_TEXT_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def _first_turn(messages: list[dict]) -> dict | None:
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    return turns[0] if turns else None


def _official_defect_applies(c: dict) -> bool:
    """The official Llama templates print list content as Python/JSON text in two places: the first
    turn when tools are offered, and tool results. Those cases get our documented variant."""
    first = _first_turn(c["messages"])
    listed_first = c.get("tools") is not None and first is not None and isinstance(first.get("content"), list)
    listed_result = any(m["role"] == "tool" and isinstance(m.get("content"), list) for m in c["messages"])
    return listed_first or listed_result


# --- Llama: the shared goldens -------------------------------------------------------------------

@pytest.mark.parametrize("family", OFFICIAL_TOOL_FAMILIES)
@pytest.mark.parametrize("case_id", [c["id"] for c in shared_spec()["cases"]])
def test_shared_llama_goldens(family: str, case_id: str) -> None:
    c = case(case_id)
    golden = shared_golden(family, case_id)
    assert golden is not None and golden.suffix == ".txt"
    expected = golden.read_text(encoding="utf-8")
    first = _first_turn(c["messages"])
    if isinstance(first["content"], list):
        # The documented variant: the official template prints the parts list as Python text and
        # loses the image; we write the parts (image placeholder where the image stands), trimmed.
        official_text = repr(first["content"])
        assert official_text in expected and "<|image|>" not in expected
        ours = "".join("<|image|>" if p["type"] == "image" else p["text"] for p in first["content"]).strip()
        expected = expected.replace(official_text, ours)
    prompt = render_chat(get_family(family), case_messages(c), tools=case_tools(c), now=render_now())
    assert prompt.text == expected
    assert prompt.text.count("<|image|>") == prompt.image_count


def test_variant_keeps_the_image_of_the_first_turn() -> None:
    c = case("tools_offered_with_image")
    for family in OFFICIAL_TOOL_FAMILIES:
        text = render_case(family, c)
        assert "[{'type'" not in text
        assert "\n\n<|image|>What color is this? Use the tool.<|eot" in text


@cache
def _load_render_golden():
    spec = importlib.util.spec_from_file_location("render_golden", conformance_dir() / "render_golden.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.mark.parametrize("family", OFFICIAL_TOOL_FAMILIES)
@pytest.mark.parametrize("case_id", [c["id"] for c in all_cases()])
def test_llama_matches_official_template_outside_the_defect(family: str, case_id: str) -> None:
    """Our cases too, rendered by the official template (via the shared renderer), where the official
    template has no list-printing defect: byte-identical, or the same refusal."""
    c = case(case_id)
    if _official_defect_applies(c):
        pytest.skip("the official template prints list content as text here (documented variant)")
    rg = _load_render_golden()
    source = rg.load_template_source(conformance_dir() / "chat_templates", family)
    env = rg.build_environment(render_now())
    try:
        expected = rg.render_case(env, source, family, c["messages"], True, c.get("tools"))
    except Exception as exc:  # noqa: BLE001 - the official template's raise_exception
        with pytest.raises(PromptRefused) as refused:
            render_case(family, c)
        assert refused.value.message == str(exc)
        return
    assert render_case(family, c) == expected


def test_llama_tool_result_with_image_is_placed() -> None:
    c = case("tool_result_with_image")
    for family in OFFICIAL_TOOL_FAMILIES:
        prompt = render_chat(get_family(family), case_messages(c), tools=case_tools(c), now=render_now())
        assert prompt.image_count == 1
        assert 'ipython' in prompt.text and '\n\n<|image|>"Clicked at (1180, 24)."<|eot' in prompt.text


# --- Qwen2.5 Hermes format: the official Qwen2.5 template ---------------------------------------

@cache
def _reference_template(default_system_prompt: str) -> jinja2.Template:
    """The official Qwen2.5 template, its default system text replaced by the VLM family's own
    (Qwen2.5-VL and FastVLM ship "You are a helpful assistant.")."""
    source = HERMES_REFERENCE.read_text(encoding="utf-8")
    assert source.count(QWEN_TEXT_DEFAULT_SYSTEM) == 2
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    return env.from_string(source.replace(QWEN_TEXT_DEFAULT_SYSTEM, default_system_prompt))


def _as_text(messages: list[dict], family_name: str) -> list[dict]:
    """List content written as the VLM family writes images into text, for a text-only template:
    Qwen2.5-VL's vision markers where the image stands; FastVLM's marker lines ahead of the text."""
    family = get_family(family_name)
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            images = [p for p in content if p["type"] == "image"]
            texts = [p["text"] for p in content if p["type"] == "text"]
            if family.marker_rule == "text":
                content = "".join(f"{family.image_placeholder}\n" for _ in images) + "\n".join(texts)
            else:
                content = "".join(family.image_placeholder if p["type"] == "image" else p["text"] for p in content)
            message = {**message, "content": content}
        out.append(message)
    return out


@pytest.mark.parametrize("family", ["qwen2_5_vl", "fastvlm"])
@pytest.mark.parametrize("case_id", [c["id"] for c in all_cases()])
def test_hermes_families_match_the_qwen2_5_template(family: str, case_id: str) -> None:
    c = case(case_id)
    reference = _reference_template(get_family(family).default_system_prompt)
    expected = reference.render(messages=_as_text(c["messages"], family), tools=c.get("tools"),
                                add_generation_prompt=True)
    assert render_case(family, c) == expected


@pytest.mark.parametrize("family", ["qwen2_5_vl", "fastvlm"])
def test_hermes_families_reproduce_the_upstream_example(family: str) -> None:
    """The prompt huggingface.js's test asserts for the Qwen2.5 template on Qwen's function-calling
    example (two parallel calls, two results, a system message of its own)."""
    example = json.loads((HERE / "reference_templates" / "qwen2_5_function_call_example.json").read_text("utf-8"))
    prompt = render_chat(get_family(family), case_messages(example), tools=case_tools(example),
                         add_generation_prompt=example["add_generation_prompt"])
    assert prompt.text == example["target"]
    assert _reference_template(QWEN_TEXT_DEFAULT_SYSTEM).render(
        messages=example["messages"], tools=example["tools"], add_generation_prompt=False) == example["target"]


def test_text_only_cases_need_no_rewriting() -> None:
    """On text-only conversations the comparison above is against the untouched case messages."""
    for c in all_cases():
        if not any(isinstance(m.get("content"), list) for m in c["messages"]):
            assert _as_text(c["messages"], "qwen2_5_vl") == c["messages"]


# --- every family: our goldens --------------------------------------------------------------------

def _golden_params() -> list:
    return [pytest.param(family, c["id"], id=f"{family}/{c['id']}") for family in FAMILIES for c in all_cases()]


@pytest.mark.parametrize(("family", "case_id"), _golden_params())
def test_tool_golden(family: str, case_id: str) -> None:
    golden = shared_golden(family, case_id) or our_golden(family, case_id)
    assert golden is not None, f"no golden for {family}/{case_id}: run make_tool_goldens"
    c = case(case_id)
    if golden.suffix == ".error":
        expected = golden.read_text(encoding="utf-8").strip().split(": ", 1)[1]
        with pytest.raises(PromptRefused) as refused:
            render_case(family, c)
        assert refused.value.status == 400 and refused.value.message == expected
        return
    text = render_case(family, c)
    if shared_golden(family, case_id) is None:  # shared ones: see test_shared_llama_goldens
        assert text.encode("utf-8") == golden.read_bytes()
    images = sum(p["type"] == "image" for m in c["messages"] if isinstance(m.get("content"), list)
                 for p in m["content"])
    assert render_chat(get_family(family), case_messages(c), tools=case_tools(c), now=render_now()).image_count \
        == images


def test_committed_goldens_are_exactly_the_generated_ones() -> None:
    expected = expected_files()
    present = {str(p.relative_to(HERE / "golden_tools")) for p in (HERE / "golden_tools").glob("*/*")}
    assert present == set(expected)
    assert len(expected) + 2 * len(shared_spec()["cases"]) == len(FAMILIES) * len(all_cases())


def test_gemma_refuses_a_user_turn_after_a_tool_result() -> None:
    with pytest.raises(PromptRefused, match="must alternate"):
        render_case("gemma3", case("tool_result_then_user"))


def test_llama3_2_vision_refuses_two_calls_in_one_turn() -> None:
    with pytest.raises(PromptRefused, match="single tool-calls"):
        render_case("llama3_2_vision", case("parallel_calls_with_text"))


@pytest.mark.parametrize("family", OFFICIAL_TOOL_FAMILIES)
def test_llama_refuses_tools_without_a_first_turn(family: str) -> None:
    tools = case_tools(case("tool_call_and_result"))
    with pytest.raises(PromptRefused, match="no first user message"):
        render_chat(get_family(family), [ChatMessage("system", "sys")], tools=tools)


# --- render → parse round trip ----------------------------------------------------------------------

CALLS = [("get_weather", {"city": "Paris", "unit": "c"}), ("get_weather", {"city": "Zürich"})]


@pytest.mark.parametrize("family_name", FAMILIES)
@pytest.mark.parametrize("with_text", [False, True])
def test_rendered_calls_parse_back(family_name: str, with_text: bool) -> None:
    """The assistant turn the template writes for calls is read back as those calls by the family's
    parser (the model answers in the syntax it was shown). Text ahead of the calls stays text for the
    hermes families; the JSON families put it elsewhere (Gemma after the calls; Llama 4 between
    python markers; Llama 3.2 drops it)."""
    family = get_family(family_name)
    calls = CALLS[:1] if not family.tools.parallel else CALLS
    tools = case_tools(case("tool_call_and_result"))
    user = [ChatMessage("user", [TextPart("Weather?")])]
    tool_calls = [ToolCall(f"call_{i}", FunctionCall(name, json.dumps(args))) for i, (name, args) in enumerate(calls)]
    assistant = ChatMessage("assistant", [TextPart("On it.")] if with_text else None, tool_calls=tool_calls)
    prefix = render_chat(family, user, tools=tools).text
    full = render_chat(family, [*user, assistant], tools=tools, add_generation_prompt=False).text
    assert full.startswith(prefix)
    output = full[len(prefix):]
    stops = [output.find(stop) for stop in family.stop if stop in output]
    output = output[:min(stops)] if stops else output
    parsed = parse_tool_calls(family.tools, output, tools)
    if with_text and family.tools.parser == "json" and "<|python_start|>" in output:
        assert parsed.calls == [] and parsed.content == output  # Llama 4: text first, by the template
        return
    assert [(c.function.name, json.loads(c.function.arguments)) for c in parsed.calls] == calls
    assert all(c.function.arguments == json.dumps(json.loads(c.function.arguments), separators=(",", ":"),
                                                  ensure_ascii=False) for c in parsed.calls)
    if with_text and family_name != "llama3_2_vision":
        assert parsed.content is not None and parsed.content.strip() == "On it."  # LLaVA: " On it."
    else:
        assert parsed.content is None


# --- request errors ---------------------------------------------------------------------------------

def _with_arguments(arguments: str) -> list[ChatMessage]:
    return [ChatMessage("user", "hi"),
            ChatMessage("assistant", tool_calls=[ToolCall("call_1", FunctionCall("get_weather", "{}")),
                                                 ToolCall("call_2", FunctionCall("get_weather", arguments))])]


@pytest.mark.parametrize("arguments", ['{"city": ', "[1, 2]", '"Paris"'])
def test_arguments_that_are_no_json_object_are_refused(arguments: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        render_chat(get_family("qwen2_5_vl"), _with_arguments(arguments))
    assert refused.value.param == "messages[1].tool_calls[1].function.arguments"
    assert refused.value.status == 400


def test_empty_arguments_mean_no_arguments() -> None:
    text = render_chat(get_family("qwen2_5_vl"), _with_arguments("")).text
    assert text.count('{"name": "get_weather", "arguments": {}}') == 2


def test_tool_calls_belong_to_assistant_messages() -> None:
    messages = [ChatMessage("user", "hi", tool_calls=[ToolCall("call_1", FunctionCall("f", "{}"))])]
    with pytest.raises(InvalidRequest, match="only assistant") as refused:
        render_chat(get_family("llama4"), messages)
    assert refused.value.param == "messages[0].tool_calls"


def test_image_markers_in_tools_or_arguments_are_refused() -> None:
    family = get_family("llava_1_5")
    tools = [Tool(FunctionDef("look", description="shows an <image>"))]
    with pytest.raises(InvalidRequest, match="reserves for images") as refused:
        render_chat(family, [ChatMessage("user", "hi")], tools=tools)
    assert refused.value.param == "tools[0]"
    with pytest.raises(InvalidRequest, match="reserves for images") as refused:
        render_chat(get_family("qwen2_5_vl"), _with_arguments('{"x": "\\u003c|image_pad|>"}'))
    assert refused.value.param == "messages[1].tool_calls[1].function"


def test_tools_are_rendered_without_unset_fields() -> None:
    text = render_chat(get_family("qwen2_5_vl"), [ChatMessage("user", "hi")],
                       tools=[Tool(FunctionDef("ping", strict=True))]).text
    assert '\n{"type": "function", "function": {"name": "ping"}}\n' in text


def test_no_tools_and_empty_tools_render_alike() -> None:
    messages = [ChatMessage("user", [TextPart("hi")])]
    for family in map(get_family, FAMILIES):
        assert render_chat(family, messages, tools=[]).text == render_chat(family, messages).text


def test_tool_content_as_text_parts_renders_like_a_string() -> None:
    for family in ["qwen2_5_vl", "llama4", "gemma3"]:
        base = openai_messages(case("tool_call_and_result"))
        parts = [*base[:-1], {**base[-1], "content": [{"type": "text", "text": base[-1]["content"]}]}]
        as_string = render_chat(get_family(family), _decode(base)).text
        assert render_chat(get_family(family), _decode(parts)).text == as_string


def _decode(messages: list[dict]) -> list[ChatMessage]:
    import msgspec

    return msgspec.json.decode(json.dumps(messages).encode(), type=list[ChatMessage])


# --- data -------------------------------------------------------------------------------------------

def test_every_family_has_a_tool_format_and_documents_it() -> None:
    toml = (Path(get_family("gemma3").directory) / "families.toml").read_text(encoding="utf-8")
    docs = (HERE.parents[2] / "docs" / "tools.md").read_text(encoding="utf-8")
    for name in FAMILIES:
        family = get_family(name)
        assert family.tools is not None and family.tools.source
        assert f"[{name}.tools]" in toml
        assert re.search(rf"`{name}`", docs), name
