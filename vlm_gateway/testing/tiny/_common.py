"""Shared helpers of the tiny-checkpoint builders."""

from __future__ import annotations

import sys
from pathlib import Path

SEED = 0
DTYPE = "bfloat16"  # what the checkpoints are saved in and what vlm_gateway.engines.vllm_server runs

# Text-model sizes every family uses. vLLM's CPU attention refuses head_size 16; 64 works.
HIDDEN = 64
HEAD_DIM = 64
HEADS = 1
KV_HEADS = 1
INTERMEDIATE = 128
LAYERS = 2


def text_dims(tok) -> dict:
    """The tiny text model's sizes every family shares. The vocabulary is exactly the tokenizer's: real
    checkpoints pad it, but their padding rows never score high, while a random model would pick (and
    rank among its top logprobs) ids that have no token, and vLLM 0.32's engine dies decoding those
    (``convert_ids_list_to_tokens`` gets None)."""
    return dict(vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS)


def log(msg: str) -> None:
    print(f"[vlm_gateway.testing.tiny] {msg}", file=sys.stderr, flush=True)


def save_model(model_cls, config, out: Path) -> None:
    """Instantiate ``model_cls(config)`` with fixed-seed random weights and save it in ``DTYPE``."""
    import torch

    torch.manual_seed(SEED)
    model = model_cls(config).eval()
    dtype = getattr(torch, DTYPE)
    for p in model.parameters():
        p.data = p.data.to(dtype)
    for module in model.modules():  # real floating buffers only (Llama 4's RoPE buffer is complex)
        for name, buf in module._buffers.items():
            if buf is not None and buf.is_floating_point():
                module._buffers[name] = buf.to(dtype)
    model.save_pretrained(out, safe_serialization=True)
    n = sum(p.numel() for p in model.parameters())
    log(f"saved {model_cls.__name__} ({n / 1e6:.2f} M params) to {out}")


def added(tokens: list[str], special: bool = True):
    from tokenizers import AddedToken

    return [AddedToken(t, special=special, normalized=False, lstrip=False, rstrip=False) for t in tokens]


def rename_weights(out: Path, rename) -> None:
    """Rewrite ``out/model.safetensors`` with keys mapped through ``rename`` (for vLLM's names)."""
    from safetensors.torch import load_file, save_file

    path = out / "model.safetensors"
    tensors = load_file(path)
    renamed = {rename(k): v for k, v in tensors.items()}
    if list(renamed) != list(tensors):
        save_file(renamed, path, metadata={"format": "pt"})


def finish(out: Path) -> None:
    """Make every file world-readable (safetensors writes 0600)."""
    for p in out.rglob("*"):
        if p.is_file():
            p.chmod(0o644)


def nest_vision_model(key: str, prefix: str = "vision_tower.") -> str:
    """``vision_tower.X`` -> ``vision_tower.vision_model.X``.

    transformers 5 saves CLIP/SigLIP towers without the ``vision_model.`` level that the hub
    checkpoints (and vLLM's ``CLIPVisionModel``/``SiglipVisionModel``) have.
    """
    if key.startswith(prefix) and not key.startswith(prefix + "vision_model."):
        return prefix + "vision_model." + key[len(prefix) :]
    return key
