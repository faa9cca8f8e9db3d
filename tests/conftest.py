"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from vlm_gateway.engines.cpu_compat import install_import_hook
from vlm_gateway.testing.tiny import ensure_tiny

install_import_hook()  # tests import transformers (and so torchvision) directly

# Uploaded files (the disk backend's default directory) stay inside this run, in every process it starts.
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="vlm-gateway-test-data-")


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    """Where tiny checkpoints are cached (built once per machine, reused by later runs)."""
    return Path(os.environ.get("VLM_GATEWAY_TINY_DIR", Path.home() / ".cache" / "vlm-gateway" / "tiny"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_dir: Path) -> Path:
    """A tiny LLaVA-1.5 checkpoint (its tokenizer and config are what route tests need)."""
    return ensure_tiny("llava_1_5", tiny_dir)
