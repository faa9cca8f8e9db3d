"""Every golden prompt in the shared conformance set, rendered through ``render_chat``.

119 goldens (7 families x 17 cases), one of them a refusal (Gemma 3's role alternation), compared
byte for byte. The fixtures are read from the shared directory at test time.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gateway.prompts.conformance import (
    case_messages,
    cases_spec,
    conformance_dir,
    golden_files,
    render_now,
)
from vlm_gateway.errors import PromptRefused
from vlm_gateway.prompts.families import get_family, load_families
from vlm_gateway.prompts.render import render_chat

EXPECTED_GOLDENS = 119


def _golden_params() -> list:
    try:
        files = golden_files()
    except OSError:
        files = []
    return [pytest.param(path, id=f"{path.parent.name}/{path.name}") for path in files] or [
        pytest.param(None, id="no-goldens-found")
    ]


def test_conformance_set_is_complete() -> None:
    assert (conformance_dir() / "cases.json").is_file(), f"conformance fixtures missing at {conformance_dir()}"
    files = golden_files()
    assert len(files) == EXPECTED_GOLDENS
    assert sum(path.suffix == ".error" for path in files) == 1
    assert {path.parent.name for path in files} == set(load_families())


@pytest.mark.parametrize("golden", _golden_params())
def test_golden(golden: Path | None) -> None:
    assert golden is not None, f"no goldens under {conformance_dir()}"
    spec = cases_spec()
    case = next(c for c in spec["cases"] if c["id"] == golden.stem)
    add_generation_prompt = bool(case.get("add_generation_prompt",
                                          spec.get("render", {}).get("add_generation_prompt", True)))
    family = get_family(golden.parent.name)
    messages = case_messages(case)
    if golden.suffix == ".error":
        expected = golden.read_text(encoding="utf-8").strip().split(": ", 1)[1]
        with pytest.raises(PromptRefused) as refused:
            render_chat(family, messages, add_generation_prompt=add_generation_prompt, now=render_now())
        assert refused.value.status == 400
        assert refused.value.message == expected
    else:
        prompt = render_chat(family, messages, add_generation_prompt=add_generation_prompt, now=render_now())
        assert prompt.text.encode("utf-8") == golden.read_bytes()
        assert prompt.image_count == sum(
            part.get("type") == "image" for m in case["messages"] if isinstance(m["content"], list)
            for part in m["content"])
