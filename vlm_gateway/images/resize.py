"""The ``detail`` rule: how large an image may be when it reaches the engine (pure arithmetic, no Pillow).

``low``  → the longer side is at most ``rule.low_max_side`` (512 px by default).
``high`` → the longer side is at most ``rule.high_max_side`` and the area at most ``rule.high_max_pixels``
           (either may be ``None``: no limit of that kind).
``auto`` → the family's own reading (``rule.auto``, ``auto`` in families.toml): ``high`` (every family
           the project ships) is ``low`` when the image already fits the low rule (longer side ≤
           ``low_max_side``, so nothing changes), else ``high``: the model family's full resolution;
           ``low`` is ``low``.

Images are only ever scaled down to fit, keeping the aspect ratio, except that an image smaller than
``rule.min_pixels`` is scaled up to reach it (the side limit still wins).
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec

_EPS = 1e-9


class DetailRule(msgspec.Struct, frozen=True):
    """Per-model-family size limits, filled in by the caller."""

    low_max_side: int = 512
    high_max_side: int | None = None
    high_max_pixels: int | None = None
    min_pixels: int | None = None
    auto: Literal["high", "low"] = "high"  # what ``auto`` means for the family


def effective_detail(width: int, height: int, detail: str, rule: DetailRule) -> Literal["low", "high"]:
    """Resolve ``auto`` to ``low`` or ``high`` (see the module docstring)."""
    if detail == "low":
        return "low"
    if detail == "high":
        return "high"
    return "low" if rule.auto == "low" or max(width, height) <= rule.low_max_side else "high"


def _limits(detail: str, rule: DetailRule) -> tuple[int | None, int | None]:
    if detail == "low":
        return rule.low_max_side, None
    return rule.high_max_side, rule.high_max_pixels


def _fit(width: int, height: int, scale: float, rounding) -> tuple[int, int]:
    return max(1, rounding(width * scale)), max(1, rounding(height * scale))


def _down(w: int, h: int, max_side: int | None, max_pixels: int | None) -> tuple[int, int]:
    """Largest size ≤ (w, h) with the same aspect that fits both limits."""
    scale = 1.0
    if max_side and max(w, h) > max_side:
        scale = max_side / max(w, h)
    if max_pixels and w * h * scale * scale > max_pixels:
        scale = min(scale, math.sqrt(max_pixels / (w * h)))
    if scale >= 1.0:
        return w, h
    return _fit(w, h, scale, lambda x: math.floor(x + _EPS))


def target_size(width: int, height: int, detail: str, rule: DetailRule) -> tuple[int, int]:
    """The size to send for an image of ``width`` × ``height`` under ``detail`` and ``rule``."""
    if width <= 0 or height <= 0:
        raise ValueError("image dimensions must be positive")
    max_side, max_pixels = _limits(effective_detail(width, height, detail, rule), rule)
    w, h = _down(width, height, max_side, max_pixels)
    if (w, h) == (width, height) and rule.min_pixels and width * height < rule.min_pixels:
        scale = math.sqrt(rule.min_pixels / (width * height))
        w, h = _fit(width, height, scale, lambda x: math.ceil(x - _EPS))
        w, h = _down(w, h, max_side, max_pixels)
    return w, h
