"""vlm_gateway.testing.tiny: each tiny checkpoint round-trips through transformers (no vLLM server here)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from vlm_gateway.engines import cpu_compat

cpu_compat.apply()  # before transformers imports torchvision

from PIL import Image  # noqa: E402
from safetensors import safe_open  # noqa: E402
from transformers import AutoConfig, AutoProcessor, AutoTokenizer  # noqa: E402

from vlm_gateway.testing.tiny import FAMILIES, build_tiny, ensure_tiny, family_module, is_complete  # noqa: E402

# Special tokens each family's tokenizer must have (besides its image placeholder/token).
SPECIALS = {
    "llava_1_5": ["<s>", "</s>", "<unk>", "<image>", "<pad>"],
    "qwen2_5_vl": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                   "<|image_pad|>", "<|video_pad|>"],
    "gemma3": ["<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
               "<end_of_image>", "<image_soft_token>"],
    "llama4": ["<|begin_of_text|>", "<|header_start|>", "<|header_end|>", "<|eot|>", "<|image|>",
               "<|image_start|>", "<|image_end|>", "<|patch|>", "<|tile_x_separator|>",
               "<|tile_y_separator|>"],
    "fastvlm": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "phi3_5_vision": ["<s>", "</s>", "<unk>", "<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>",
                      "<|user|>"],
    "llama3_2_vision": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                        "<|python_tag|>"],
}  # fmt: skip
IMAGE_SIZES = [(224, 224), (640, 480)]


def expected_image_tokens(family: str, width: int, height: int) -> int:
    """How many IMAGE_TOKEN the HF processor should put in the prompt for one image."""
    m = family_module(family)
    if family == "llama4":
        rows, cols = m._tiles(width, height)
        return m.PATCHES_PER_TILE * (1 + (rows * cols if rows * cols > 1 else 0))
    return m.tokens_for_image(width, height)


@pytest.fixture(scope="module", params=FAMILIES)
def built(request, tmp_path_factory) -> tuple[str, Path]:
    family = request.param
    return family, build_tiny(family, tmp_path_factory.mktemp("tiny") / family)


def test_config(built):
    family, path = built
    m = family_module(family)
    config = AutoConfig.from_pretrained(path, trust_remote_code=True)
    assert config.architectures == [m.ARCHITECTURE]
    text = config.get_text_config()
    assert text.hidden_size == 64
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    assert head_dim == 64  # vLLM's CPU attention refuses head size 16
    past = getattr(m, "IDS_PAST_TEXT_VOCAB", 0)
    assert text.vocab_size >= len(AutoTokenizer.from_pretrained(path, trust_remote_code=True)) - past
    assert json.loads((path / "tiny_manifest.json").read_text())["family"] == family
    assert is_complete(path, family)


def test_tokenizer(built):
    family, path = built
    m = family_module(family)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    vocab = tok.get_vocab()
    for t in [*SPECIALS[family], m.IMAGE_TOKEN]:
        assert t in vocab, t
        assert tok.encode(t, add_special_tokens=False) == [vocab[t]], t
    assert tok.chat_template
    text = 'Hello, world! Ünïcödé 你好 🙂\n\n\ttabs  and  spaces {"json": [1, 2]}'
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert len(tok) < 2000 or len(tok) == m.VOCAB_SIZE  # tiny; Phi-3.5-vision pads to the real ids (vLLM needs 32044)
    if family == "gemma3":  # vLLM's Gemma 3 processor looks these up as vocabulary entries
        for nl in ["\n", "\n\n", "\n\n\n", "\n\n\n\n"]:
            assert nl in vocab and tok.encode(nl, add_special_tokens=False) == [vocab[nl]]


def placeholder(family: str) -> str:
    """The prompt text for the first image (Phi-3.5-vision numbers them: <|image_1|>)."""
    return family_module(family).IMAGE_PLACEHOLDER.replace("{n}", "1")


def test_chat_template_renders_placeholder_once(built):
    family, path = built
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    if family == "phi3_5_vision":  # its published template takes string content with the markers written in
        messages = [{"role": "user", "content": f"{placeholder(family)}\nWhat is this?"}]
    else:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.count(placeholder(family)) == 1
    assert "What is this?" in prompt


@pytest.mark.parametrize("size", IMAGE_SIZES)
def test_processor_expands_one_image(built, size):
    family, path = built
    m = family_module(family)
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)  # Phi-3.5-vision: code in the folder
    assert (path / "preprocessor_config.json").is_file()
    text = f"Look: {placeholder(family)} What is it?"
    out = processor(text=[text], images=[Image.new("RGB", size, (120, 30, 200))], return_tensors="pt")
    image_token_id = getattr(m, "PROCESSOR_IMAGE_ID", None) or processor.tokenizer.convert_tokens_to_ids(m.IMAGE_TOKEN)
    count = int((out["input_ids"][0] == image_token_id).sum())
    assert count == expected_image_tokens(family, *size)


def test_known_token_counts():
    assert family_module("llava_1_5").tokens_for_image(1000, 300) == 576
    assert family_module("qwen2_5_vl").tokens_for_image(224, 224) == 64
    assert family_module("gemma3").tokens_for_image(224, 224) == 256
    assert family_module("llama4").tokens_for_image(224, 224) == 147  # start + image + 144 + end
    fastvlm = family_module("fastvlm")
    assert fastvlm.tokens_for_image(64, 48) == fastvlm.tokens_for_image(2000, 900) == 256


def test_weights_use_vllm_names(built):
    family, path = built
    with safe_open(path / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    if family in ("llava_1_5", "gemma3"):
        tower = [k for k in keys if k.startswith("vision_tower.")]
        assert tower and all(k.startswith("vision_tower.vision_model.") for k in tower)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        h.update((path / name).read_bytes())
    return h.hexdigest()


def test_deterministic_and_cached(tmp_path):
    a = build_tiny("llava_1_5", tmp_path / "a")
    b = ensure_tiny("llava_1_5", tmp_path / "cache")
    assert b == (tmp_path / "cache" / "llava_1_5").resolve()
    assert _digest(a) == _digest(b)
    mtime = (b / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny("llava_1_5", tmp_path / "cache") == b
    assert (b / "model.safetensors").stat().st_mtime_ns == mtime  # not rebuilt
    (b / "tiny_manifest.json").unlink()  # incomplete -> rebuilt
    assert ensure_tiny("llava_1_5", tmp_path / "cache") == b and is_complete(b, "llava_1_5")
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_unknown_family(tmp_path):
    with pytest.raises(ValueError, match="unknown tiny family"):
        build_tiny("nope", tmp_path / "x")
