"""Where the shared conformance fixtures are, and what they hold (read at test time, never copied).

The directory is ``$VLM_GATEWAY_CONFORMANCE_DIR``, else ``../shared/conformance`` next to the
repository root (the folder holding pyproject.toml, found by walking up from this file).
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import msgspec

from vlm_gateway.schemas.openai import ChatMessage

ENV = "VLM_GATEWAY_CONFORMANCE_DIR"


def repo_root() -> Path:
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    raise RuntimeError("no pyproject.toml above the tests")


def conformance_dir() -> Path:
    override = os.environ.get(ENV)
    return Path(override) if override else repo_root().parent / "shared" / "conformance"


def cases_spec() -> dict:
    return json.loads((conformance_dir() / "cases.json").read_text(encoding="utf-8"))


def golden_files() -> list[Path]:
    """Every golden prompt (.txt) and refusal record (.error), sorted."""
    golden = conformance_dir() / "golden"
    return sorted([*golden.glob("*/*.txt"), *golden.glob("*/*.error")])


def render_now() -> datetime:
    return datetime.fromisoformat(cases_spec().get("render", {}).get("strftime_now", "2025-01-15T12:00:00"))


def case_messages(case: dict) -> list[ChatMessage]:
    """A case's messages decoded the way a request body is (msgspec, strict JSON)."""
    return msgspec.json.decode(json.dumps(case["messages"]).encode(), type=list[ChatMessage])
