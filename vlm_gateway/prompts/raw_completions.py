"""Raw ``/v1/completions`` prompts: their forms, and their image markers.

``completion_prompts`` reads OpenAI's four prompt forms. A raw prompt is sent as written, except that its
image markers become the family's own. Clients may write the generic ``<image>`` (mapped to the native
placeholder, numbered ``<|image_1|>``, ``<|image_2|>``... in order for Phi-3.5-vision) or the native
placeholder itself (kept). For LLaVA and FastVLM the two are the same string. The image token alone,
outside its placeholder (Qwen's bare ``<|image_pad|>``), is refused: the engine would misread it. The
number of markers must equal the number of images sent.
"""

from __future__ import annotations

import re
from functools import lru_cache

from vlm_gateway.errors import InvalidRequest
from vlm_gateway.prompts.families import Family
from vlm_gateway.prompts.markers import GENERIC_MARKER, is_numbered, placeholder, placeholder_pattern


@lru_cache(maxsize=64)
def _marker_pattern(family: Family) -> re.Pattern[str]:
    """Native placeholder, generic marker, stray image token: first alternative wins at a position."""
    native = placeholder_pattern(family).pattern
    parts = {native: f"(?P<native>{native})"}
    parts.setdefault(re.escape(GENERIC_MARKER), f"(?P<generic>{re.escape(GENERIC_MARKER)})")
    parts.setdefault(re.escape(family.image_token), f"(?P<token>{re.escape(family.image_token)})")
    return re.compile("|".join(parts.values()))


def map_image_markers(family: Family, prompt: str, image_count: int) -> str:
    """``prompt`` with its image markers in the family's native form; ``InvalidRequest`` (param
    ``prompt``) when the markers do not match the ``image_count`` images sent."""
    numbers: list[int] = []

    def replace(match: re.Match[str]) -> str:
        if match.lastgroup == "token":
            raise InvalidRequest(
                f"the prompt holds {match.group(0)!r} outside the image placeholder "
                f"{placeholder(family, 1)!r}; write {GENERIC_MARKER!r} where each image goes",
                param="prompt",
            )
        position = len(numbers) + 1
        if match.lastgroup == "native":
            if not is_numbered(family):
                numbers.append(position)
                return match.group(0)
            numbers.append(int(match.group("n")))
            return placeholder(family, numbers[-1])  # as the engine's processor reads it (<|image_1|>, not _01)
        numbers.append(position)
        return placeholder(family, position)

    mapped = _marker_pattern(family).sub(replace, prompt)
    if len(numbers) != image_count:
        native = placeholder(family, 1)
        also = f" (or {native!r})" if native != GENERIC_MARKER else ""
        raise InvalidRequest(
            f"the prompt has {len(numbers)} image marker(s) but the request sends {image_count} "
            f"image(s); write one {GENERIC_MARKER!r}{also} per image",
            param="prompt",
        )
    if sorted(numbers) != list(range(1, image_count + 1)):
        raise InvalidRequest(
            f"image markers must number the images 1 to {image_count}, each once; "
            f"the prompt has {', '.join(placeholder(family, n) for n in numbers)}",
            param="prompt",
        )
    return mapped


def completion_prompts(prompt: str | list) -> list[str | list[int]]:
    """OpenAI's four prompt forms as a list of prompts: a string, strings, token ids, lists of ids."""
    if isinstance(prompt, str):
        return [prompt]
    if all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    if all(isinstance(p, list) for p in prompt):
        return list(prompt)
    raise InvalidRequest("prompt must be a string, a list of strings, a list of token ids or a list of lists of "
                         "token ids (not a mix)", param="prompt")
