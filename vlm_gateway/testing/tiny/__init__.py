"""Tiny random-weight checkpoints of real vision-language families, for tests and CPU benchmarks.

Each family module (one file each) builds, with a fixed seed, a checkpoint in the *real* architecture
(config ``architectures``), with the family's real special tokens, a small BPE tokenizer that encodes any
text, the real processor (``preprocessor_config.json`` / ``processor_config.json``) and ``chat_template``,
sized so vLLM on CPU starts it quickly (hidden 64, head size 64, 2 layers, small vision tower) while
image preprocessing keeps the family's real image-token counts.

API::

    build_tiny("llava_1_5", Path("/tmp/llava"))   # (re)build into that directory, atomically
    ensure_tiny("llava_1_5", cache_dir)            # cached build: cache_dir / "llava_1_5"

Families (``FAMILIES``): ``llava_1_5``, ``qwen2_5_vl``, ``gemma3``, ``llama4``, ``fastvlm`` (served by vLLM's
Transformers backend; needs ``timm``), ``phi3_5_vision`` (its config and processor are this project's
re-implementation of the Hub's remote code, copied into the checkpoint: serve it with
``--trust-remote-code``), ``llama3_2_vision`` (mllama: transformers runs it; vLLM 0.32 cannot serve it,
see NOTES.md). See NOTES.md for what vLLM does with each.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from types import ModuleType

from . import _common
from ._common import log

__all__ = ["FAMILIES", "BUILD_VERSION", "build_tiny", "ensure_tiny", "family_module", "is_complete"]

FAMILIES = ("llava_1_5", "qwen2_5_vl", "gemma3", "llama4", "fastvlm", "phi3_5_vision", "llama3_2_vision")
BUILD_VERSION = 2  # bump when a builder changes what it writes; cached builds are then rebuilt
MANIFEST = "tiny_manifest.json"
_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def family_module(family: str) -> ModuleType:
    """The builder module of ``family`` (has ARCHITECTURE, IMAGE_PLACEHOLDER, IMAGE_TOKEN, ...)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; known: {', '.join(FAMILIES)}")
    return importlib.import_module(f"{__name__}.{family}")


def is_complete(path: Path, family: str) -> bool:
    try:
        manifest = json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return (
        manifest.get("family") == family
        and manifest.get("version") == BUILD_VERSION
        and all((Path(path) / f).is_file() for f in manifest.get("files", _REQUIRED))
    )


def build_tiny(family: str, out_dir: Path) -> Path:
    """Build ``family`` into ``out_dir`` (replacing it); written to a temp dir, then renamed."""
    from vlm_gateway.engines import cpu_compat

    cpu_compat.apply()  # transformers' processors import torchvision/torchaudio

    module = family_module(family)
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    t0 = time.monotonic()
    log(f"building tiny {family} in {tmp}")
    try:
        module.build(tmp)
        _common.finish(tmp)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        missing = [f for f in _REQUIRED if f not in files]
        if missing:
            raise RuntimeError(f"tiny {family} build is missing {missing}")
        manifest = {"family": family, "version": BUILD_VERSION, "architecture": module.ARCHITECTURE}
        (tmp / MANIFEST).write_text(json.dumps({**manifest, "files": files}, indent=1) + "\n")
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.rename(out_dir, old)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"built tiny {family} -> {out_dir} in {time.monotonic() - t0:.1f}s")
    return out_dir


def ensure_tiny(family: str, cache_dir: Path) -> Path:
    """``cache_dir / family``, built first unless a complete build of this version is there."""
    path = Path(cache_dir).resolve() / family
    if is_complete(path, family):
        return path
    try:
        return build_tiny(family, path)
    except OSError:
        if is_complete(path, family):  # a concurrent builder won the rename
            return path
        raise
