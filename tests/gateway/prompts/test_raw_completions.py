"""Image markers in raw /v1/completions prompts."""

from __future__ import annotations

import pytest

from vlm_gateway.errors import InvalidRequest
from vlm_gateway.prompts.families import get_family, load_families
from vlm_gateway.prompts.raw_completions import map_image_markers

EXAMPLE = "SYSTEM: Hello\n\nUSER:<image>\ntell me about the image\n\nASSISTANT:"
NATIVE = {
    "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "gemma3": "<start_of_image>",
    "llama3_2_vision": "<|image|>",
    "llama4": "<|image|>",
    "phi3_5_vision": "<|image_1|>",
    "llava_1_5": "<image>",
    "fastvlm": "<image>",
}


@pytest.mark.parametrize("name", sorted(NATIVE))
def test_documented_example(name: str) -> None:
    mapped = map_image_markers(get_family(name), EXAMPLE, 1)
    assert mapped == EXAMPLE.replace("<image>", NATIVE[name])


def test_documented_example_phi_and_llava() -> None:
    assert map_image_markers(get_family("phi3_5_vision"), EXAMPLE, 1) == (
        "SYSTEM: Hello\n\nUSER:<|image_1|>\ntell me about the image\n\nASSISTANT:")
    assert map_image_markers(get_family("llava_1_5"), EXAMPLE, 1) == EXAMPLE


@pytest.mark.parametrize("name", sorted(NATIVE))
def test_native_markers_are_accepted_and_counted(name: str) -> None:
    family = get_family(name)
    prompt = f"{NATIVE[name]} first, then <image> second"
    expected_second = family.image_placeholder.replace("{n}", "2")
    assert map_image_markers(family, prompt, 2) == f"{NATIVE[name]} first, then {expected_second} second"


@pytest.mark.parametrize("name", sorted(load_families()))
@pytest.mark.parametrize(("markers", "images"), [(2, 1), (0, 1), (1, 0), (1, 3)])
def test_count_mismatch_names_both_numbers(name: str, markers: int, images: int) -> None:
    with pytest.raises(InvalidRequest) as refused:
        map_image_markers(get_family(name), "x" + "<image> " * markers, images)
    assert refused.value.status == 400 and refused.value.param == "prompt"
    assert f"{markers} image marker(s)" in refused.value.message
    assert f"sends {images} image(s)" in refused.value.message


def test_phi_numbers_generic_markers_in_order() -> None:
    family = get_family("phi3_5_vision")
    assert map_image_markers(family, "<image><image>\n<image>", 3) == "<|image_1|><|image_2|>\n<|image_3|>"
    assert map_image_markers(family, "<|image_2|> <|image_1|>", 2) == "<|image_2|> <|image_1|>"
    assert map_image_markers(family, "<|image_01|>\nWhat?", 1) == "<|image_1|>\nWhat?"  # as vLLM reads it
    with pytest.raises(InvalidRequest, match="1 to 2, each once"):
        map_image_markers(family, "<|image_1|><|image_1|>", 2)
    with pytest.raises(InvalidRequest, match="1 to 1"):
        map_image_markers(family, "<|image_5|>", 1)


def test_generic_and_native_same_string_counts_once() -> None:
    for name in ("llava_1_5", "fastvlm"):
        assert map_image_markers(get_family(name), "USER: <image>\nhi", 1) == "USER: <image>\nhi"


def test_stray_image_token_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="outside the image placeholder") as refused:
        map_image_markers(get_family("qwen2_5_vl"), "look <|image_pad|>", 1)
    assert refused.value.param == "prompt"
    with pytest.raises(InvalidRequest, match="outside the image placeholder"):
        map_image_markers(get_family("phi3_5_vision"), "<|image|>", 1)


def test_text_only_prompt_is_unchanged() -> None:
    assert map_image_markers(get_family("gemma3"), "plain <img> text", 0) == "plain <img> text"
