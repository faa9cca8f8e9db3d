"""Image markers: a family's placeholder text, numbered or not, and finding markers in text.

A family's ``image_placeholder`` stands for one image in a prompt; ``{n}`` in it is the image's number,
counted from 1 across the conversation (Phi-3.5-vision's ``<|image_{n}|>``). ``GENERIC_MARKER`` is the
family-neutral ``<image>`` that raw ``/v1/completions`` prompts may use.
"""

from __future__ import annotations

import re
from functools import lru_cache

from vlm_gateway.prompts.families import Family

GENERIC_MARKER = "<image>"


def placeholder(family: Family, n: int) -> str:
    """The family's placeholder for the ``n``-th image (from 1)."""
    return family.image_placeholder.replace("{n}", str(n))


def is_numbered(family: Family) -> bool:
    """Whether the family's placeholders carry the image's number."""
    return "{n}" in family.image_placeholder


@lru_cache(maxsize=64)
def placeholder_pattern(family: Family) -> re.Pattern[str]:
    """Matches one native placeholder; for numbered families, group ``n`` is the number."""
    return re.compile(re.escape(family.image_placeholder).replace(re.escape("{n}"), r"(?P<n>\d+)"))


@lru_cache(maxsize=64)
def reserved_pattern(family: Family) -> re.Pattern[str]:
    """Matches text that the engine would read as an image: a native placeholder or the image token."""
    alternatives = [placeholder_pattern(family).pattern, re.escape(family.image_token)]
    return re.compile("|".join(alternatives))


def count_placeholders(family: Family, text: str) -> int:
    """How many native placeholders ``text`` holds."""
    return sum(1 for _ in placeholder_pattern(family).finditer(text))


def find_reserved(family: Family, text: str) -> str | None:
    """The first image placeholder or image token written in ``text``, or None."""
    match = reserved_pattern(family).search(text)
    return match.group(0) if match else None
