"""Model families: the per-family data in ``templates/families.toml``, and detection from config.json.

``load_families()`` reads the TOML file once into frozen ``Family`` Structs. ``detect_family(config)``
maps a checkpoint's ``config.json`` (its ``architectures``, then its ``model_type``) to a family name;
``family_for_checkpoint(path)`` does the same for a local checkpoint directory. ``customize`` applies a
model's own settings (``max_images``, ``images_before_text``) on top of its family. A family's tool-call
syntax (``[<family>.tools]``) loads into ``Family.tools``, a ``vlm_gateway.tools.ToolFormat``.
"""

from __future__ import annotations

import json
import tomllib
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Literal

import msgspec

from vlm_gateway.tools.format import ToolFormat


class UnknownFamily(ValueError):
    """A checkpoint or name that matches no family in ``templates/families.toml``."""


class FamilyDetail(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How OpenAI's ``detail`` (low / high / auto) maps to pixels and prompt tokens for one family."""

    scaling: Literal["dynamic", "fixed", "tiles"]
    low_max_side: int
    auto: Literal["high", "low"] = "high"
    patch_px: int = 0  # dynamic: one token per patch_px x patch_px pixels
    min_pixels: int = 0  # smallest / largest area worth sending; 0 = no limit
    max_pixels: int = 0
    image_px: int = 0  # fixed: images are resized to image_px x image_px ...
    tokens: int = 0  # ... and cost this many tokens
    tile_px: int = 0  # tiles: tile side in pixels ...
    tokens_per_tile: int = 0
    max_tiles: int = 1
    note: str = ""


class Family(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything the gateway needs to know about one model family's prompt format."""

    name: str
    template: str
    image_placeholder: str
    image_token: str
    marker_rule: Literal["parts", "text"]
    default_system_prompt: str
    images_before_text: bool
    max_images: int
    stop: tuple[str, ...]
    bos_token: str
    eos_token: str
    add_special_tokens: bool
    architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    detail: FamilyDetail
    engine_args: tuple[str, ...] = ()  # vLLM arguments every engine of the family needs (--trust-remote-code)
    no_embedded_engine: str = ""  # why the installed vLLM cannot serve the family, and the fix (start-up error)
    # false: vLLM keeps no multimodal processor cache for the family (it turns it off for encoder-decoder
    # models), so every image is sent with its data, never by key alone
    engine_keeps_images: bool = True
    string_content_as_parts: bool = False  # request step: the template reads list content only
    # the gateway turns the family's images into the model's input itself (a ``vlm_gateway.images.features``
    # kind, with the checkpoint's numbers); "": the engine's processor does
    image_processor: Literal["", "merged_patches"] = ""
    tools: ToolFormat | None = None  # how the template writes tool calls and the model answers with them
    directory: str = ""  # the templates folder this family was loaded from (set by ``load_families``)


def templates_dir() -> Path:
    """The package's own ``templates/`` folder (package data; ``Settings.templates_dir`` may name another)."""
    return Path(str(files("vlm_gateway") / "templates"))


@lru_cache(maxsize=4)
def _load(directory: Path) -> dict[str, Family]:
    with open(directory / "families.toml", "rb") as f:
        raw = tomllib.load(f)
    return {name: msgspec.convert({"name": name, **data, "directory": str(directory)}, Family)
            for name, data in raw.items()}


def load_families(directory: str | Path | None = None) -> dict[str, Family]:
    """All families by name, read from ``<directory>/families.toml`` (default: the package's templates)
    once per folder (cached; do not mutate)."""
    return _load(Path(directory).resolve() if directory else templates_dir())


def get_family(name: str) -> Family:
    """The family called ``name``; ``UnknownFamily`` naming the known ones otherwise."""
    families = load_families()
    if name not in families:
        raise UnknownFamily(f"unknown model family {name!r}; known: {', '.join(sorted(families))}")
    return families[name]


def detect_family(config: dict, families: dict[str, Family] | None = None) -> str:
    """Family name for a checkpoint's config.json: its ``architectures`` first, then ``model_type``."""
    families = (families or load_families()).values()
    architectures = config.get("architectures") or []
    for arch in architectures:
        for family in families:
            if arch in family.architectures:
                return family.name
    model_type = config.get("model_type")
    for family in families:
        if model_type in family.model_types:
            return family.name
    raise UnknownFamily(
        f"no model family matches architectures={architectures!r}, model_type={model_type!r}; "
        "set the model's `family` explicitly or add the checkpoint to templates/families.toml"
    )


def checkpoint_file(checkpoint: str | Path, name: str) -> Path:
    """``name`` (e.g. ``config.json``) of a checkpoint: a local directory, or a Hugging Face id read
    through the local Hugging Face cache (downloaded where the network allows). ``FileNotFoundError``
    with the reason otherwise."""
    path = Path(checkpoint)
    if path.is_dir():
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name} does not exist")
        return path / name
    if path.is_file() and path.name == name:
        return path
    if path.is_absolute() or str(checkpoint).startswith((".", "~")) or str(checkpoint).count("/") > 1:
        raise FileNotFoundError(f"{checkpoint!s} not found (no such directory)")
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(str(checkpoint), name))
    except Exception as exc:  # noqa: BLE001 - not a repo id, offline, gated, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FileNotFoundError(f"{checkpoint!s} is no local directory and its {name} could not be read "
                                f"from the Hugging Face Hub ({reason})") from None


def family_for_checkpoint(checkpoint: str | Path, families: dict[str, Family] | None = None) -> str:
    """Family name for a checkpoint (a local directory, its config.json, or a Hugging Face id)."""
    try:
        config_path = checkpoint_file(checkpoint, "config.json")
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as exc:
        raise UnknownFamily(f"cannot detect the family of {str(checkpoint)!r}: {exc}") from None
    return detect_family(config, families)


def customize(family: Family, *, max_images: int | None = None,
              images_before_text: bool | None = None) -> Family:
    """The family with a model's own settings applied (``None`` keeps the family's value)."""
    changes: dict = {}
    if max_images is not None:
        changes["max_images"] = max_images
    if images_before_text is not None:
        changes["images_before_text"] = images_before_text
    return msgspec.structs.replace(family, **changes) if changes else family
