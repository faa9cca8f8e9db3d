"""The Jinja environment: transformers' chat-template behaviour, built once."""

from __future__ import annotations

from datetime import datetime

import jinja2
import pytest
from jinja2.sandbox import SecurityError

from vlm_gateway.errors import PromptRefused
from vlm_gateway.prompts.environment import get_environment, get_template, strftime_at
from vlm_gateway.prompts.families import templates_dir


@pytest.fixture()
def env() -> jinja2.Environment:
    return get_environment(templates_dir())


def test_environment_and_templates_are_cached(env: jinja2.Environment) -> None:
    assert get_environment(templates_dir()) is env
    assert get_template("gemma3.jinja") is get_template("gemma3.jinja")


def test_tojson_keeps_non_ascii(env: jinja2.Environment) -> None:
    value = {"text": "Décris これ 🐱", "n": [1, 2]}
    assert env.from_string("{{ v | tojson }}").render(v=value) == '{"text": "Décris これ 🐱", "n": [1, 2]}'
    assert env.from_string("{{ v | tojson(indent=2) }}").render(v={"a": "é"}) == '{\n  "a": "é"\n}'
    assert env.from_string("{{ v | tojson(ensure_ascii=true) }}").render(v="é") == '"\\u00e9"'


def test_raise_exception_refuses_the_prompt(env: jinja2.Environment) -> None:
    with pytest.raises(PromptRefused) as refused:
        env.from_string("{{ raise_exception('no system role') }}").render()
    assert refused.value.message == "no system role"
    assert refused.value.status == 400 and refused.value.code == "invalid_conversation"


def test_strftime_now(env: jinja2.Environment) -> None:
    template = env.from_string("{{ strftime_now('%d %b %Y') }}")
    assert template.render() == datetime.now().strftime("%d %b %Y")
    assert template.render(strftime_now=strftime_at(datetime(2025, 1, 15, 12))) == "15 Jan 2025"


def test_generation_tag_and_loop_controls(env: jinja2.Environment) -> None:
    text = ("{% for i in [1, 2, 3] %}{% if i == 3 %}{% break %}{% endif %}"
            "{% generation %}<{{ i }}>{% endgeneration %}{% endfor %}")
    assert env.from_string(text).render() == "<1><2>"


def test_trim_and_lstrip_blocks(env: jinja2.Environment) -> None:
    assert env.from_string("  {% if true %}\nx\n  {% endif %}\ny").render() == "x\ny"


def test_sandbox_is_immutable(env: jinja2.Environment) -> None:
    with pytest.raises(SecurityError):
        env.from_string("{{ items.append(1) }}").render(items=[])


def _official_cases():
    from tests.gateway.prompts.conformance import golden_files

    return [pytest.param(path, id=f"{path.parent.name}/{path.stem}") for path in golden_files()
            if path.suffix == ".txt"]


@pytest.mark.parametrize("golden", _official_cases())
def test_official_templates_render_the_goldens_here(env: jinja2.Environment, golden) -> None:
    """The environment matches transformers': the model authors' own templates reproduce the goldens."""
    from tests.gateway.prompts.conformance import case_messages, cases_spec, conformance_dir, render_now
    from vlm_gateway.prompts.convert import to_template_messages, write_markers_into_text
    from vlm_gateway.prompts.families import get_family

    family = get_family(golden.parent.name)
    source = (conformance_dir() / "chat_templates" / f"{family.name}.jinja").read_text(encoding="utf-8")
    case = next(c for c in cases_spec()["cases"] if c["id"] == golden.stem)
    messages = to_template_messages(case_messages(case))
    if family.marker_rule == "text":
        messages = write_markers_into_text(messages, family)
    text = env.from_string(source).render(
        messages=messages, add_generation_prompt=True, tools=None, documents=None,
        bos_token=family.bos_token, eos_token=family.eos_token, strftime_now=strftime_at(render_now()))
    assert text.encode("utf-8") == golden.read_bytes()
