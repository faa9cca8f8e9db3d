"""Family data from templates/families.toml and detection from config.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from vlm_gateway.prompts.families import (
    UnknownFamily,
    customize,
    detect_family,
    family_for_checkpoint,
    get_family,
    load_families,
    templates_dir,
)

FAMILIES = ["qwen2_5_vl", "gemma3", "llama3_2_vision", "llama4", "phi3_5_vision", "llava_1_5", "fastvlm"]

DETECTION = [
    ("Qwen2_5_VLForConditionalGeneration", "qwen2_5_vl", "qwen2_5_vl"),
    ("Qwen2VLForConditionalGeneration", "qwen2_vl", "qwen2_5_vl"),
    ("Gemma3ForConditionalGeneration", "gemma3", "gemma3"),
    ("MllamaForConditionalGeneration", "mllama", "llama3_2_vision"),
    ("Llama4ForConditionalGeneration", "llama4", "llama4"),
    ("Phi3VForCausalLM", "phi3_v", "phi3_5_vision"),
    ("LlavaForConditionalGeneration", "llava", "llava_1_5"),
    ("LlavaQwenForCausalLM", "llava_qwen2", "fastvlm"),
]


def test_all_families_load_once() -> None:
    families = load_families()
    assert sorted(families) == sorted(FAMILIES)
    assert load_families() is families
    for name, family in families.items():
        assert family.name == name
        assert (templates_dir() / family.template).is_file()
        assert family.max_images >= 1 and family.stop


def test_family_values() -> None:
    f = load_families()
    assert f["qwen2_5_vl"].image_placeholder == "<|vision_start|><|image_pad|><|vision_end|>"
    assert f["qwen2_5_vl"].image_token == "<|image_pad|>"
    assert f["phi3_5_vision"].image_placeholder == "<|image_{n}|>"
    assert {n for n, fam in f.items() if fam.marker_rule == "text"} == {"phi3_5_vision", "fastvlm"}
    assert {n for n, fam in f.items() if fam.images_before_text} == {"llama3_2_vision"}
    assert f["fastvlm"].default_system_prompt == "You are a helpful assistant."
    assert f["gemma3"].bos_token == "<bos>"
    assert f["llava_1_5"].detail.scaling == "fixed" and f["llava_1_5"].detail.tokens == 576
    assert f["qwen2_5_vl"].detail.patch_px == 28
    assert f["gemma3"].detail.tokens_per_tile == 256 and f["gemma3"].detail.tile_px == 896
    assert all(fam.detail.low_max_side == 512 for fam in f.values())


def test_families_are_frozen_and_hashable() -> None:
    family = get_family("gemma3")
    with pytest.raises(AttributeError):
        family.max_images = 3  # type: ignore[misc]
    assert hash(family) == hash(get_family("gemma3"))


@pytest.mark.parametrize(("arch", "model_type", "expected"), DETECTION)
def test_detect_by_architecture(arch: str, model_type: str, expected: str) -> None:
    assert detect_family({"architectures": [arch], "model_type": "something-else"}) == expected


@pytest.mark.parametrize(("arch", "model_type", "expected"), DETECTION)
def test_detect_by_model_type(arch: str, model_type: str, expected: str) -> None:
    assert detect_family({"architectures": ["SomethingElse"], "model_type": model_type}) == expected
    assert detect_family({"model_type": model_type}) == expected


def test_unknown_checkpoint_says_what_it_saw() -> None:
    with pytest.raises(UnknownFamily, match=r"BertModel.*'bert'"):
        detect_family({"architectures": ["BertModel"], "model_type": "bert"})
    with pytest.raises(UnknownFamily):
        detect_family({})
    with pytest.raises(UnknownFamily, match="known: fastvlm"):
        get_family("nope")


def test_family_for_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Phi3VForCausalLM"]}))
    assert family_for_checkpoint(tmp_path) == "phi3_5_vision"
    assert family_for_checkpoint(str(tmp_path / "config.json")) == "phi3_5_vision"
    with pytest.raises(UnknownFamily, match="not found"):
        family_for_checkpoint(tmp_path / "missing")


def test_customize_applies_model_settings() -> None:
    family = get_family("llama3_2_vision")
    assert customize(family) is family
    changed = customize(family, max_images=3, images_before_text=False)
    assert (changed.max_images, changed.images_before_text) == (3, False)
    assert (family.max_images, family.images_before_text) == (1, True)


def test_no_family_names_in_python_code() -> None:
    """A family quirk is data (families.toml) or template text, never an `if family == ...`."""
    package = Path(__file__).resolve().parents[3] / "vlm_gateway" / "prompts"
    names = re.compile("|".join(FAMILIES))
    for source in package.glob("*.py"):
        assert not names.search(source.read_text(encoding="utf-8")), source.name
