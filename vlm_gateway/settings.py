"""One typed settings object, loaded once: a TOML file, then ``VLM_GATEWAY_*`` environment overrides.

Environment names map onto the Struct tree with ``__`` between levels, e.g.::

    VLM_GATEWAY_PORT=9000
    VLM_GATEWAY_REDIS_URL=redis://127.0.0.1:6379/0
    VLM_GATEWAY_IMAGES__MAX_IMAGE_BYTES=1000000

Values are parsed as TOML scalars where they can be (numbers, booleans, arrays), else kept as strings.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec

from vlm_gateway.jobs.settings import JobSettings
from vlm_gateway.limits.settings import LimitSettings

ENV_PREFIX = "VLM_GATEWAY_"


class EngineSettings(msgspec.Struct, forbid_unknown_fields=True):
    """How a model is served.

    ``embedded``: the gateway starts and supervises a vLLM server on this machine (``args`` are extra
    vLLM engine arguments). ``remote``: requests go to already running vLLM servers at ``urls``.
    """

    kind: Literal["embedded", "remote"] = "embedded"
    urls: list[str] = []
    args: list[str] = []
    env: dict[str, str] = {}
    port: int = 0  # embedded: the vLLM server's loopback port (0 = any free port)
    startup_timeout_s: float = 600.0
    request_timeout_s: float = 600.0


class ModelSettings(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    checkpoint: str
    family: str | None = None  # detected from the checkpoint's config.json when absent
    aliases: list[str] = []
    tokenizer: str | None = None  # defaults to the checkpoint
    max_images: int | None = None  # defaults to the family's limit
    context_length: int = 4096
    images_before_text: bool | None = None  # defaults to the family's rule
    owned_by: str = "vlm-gateway"
    engine: EngineSettings = msgspec.field(default_factory=EngineSettings)


class ImageSettings(msgspec.Struct, forbid_unknown_fields=True):
    max_images_per_request: int = 30
    max_image_bytes: int = 5 * 1024 * 1024
    fetch_timeout_s: float = 1.5
    max_pixels: int = 50_000_000
    max_redirects: int = 3
    allow_loopback: bool = False
    allow_hosts: list[str] = []
    deny_hosts: list[str] = []
    cache_entries: int = 256
    cache_max_bytes: int = 256 * 1024 * 1024  # per in-memory cache (fetched bytes; sized results)
    cache_ttl_s: int = 3600


class Settings(msgspec.Struct, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 8000
    redis_url: str = ""  # empty: in-process state (single replica)
    max_request_bytes: int = 10 * 1024 * 1024
    cache_dir: str = ""  # tiny checkpoints etc.; defaults to ~/.cache/vlm-gateway
    templates_dir: str = ""  # families.toml + <family>.jinja; defaults to the package's own templates/
    log_level: str = "info"
    models: list[ModelSettings] = []
    images: ImageSettings = msgspec.field(default_factory=ImageSettings)
    limits: LimitSettings = msgspec.field(default_factory=LimitSettings)
    jobs: JobSettings = msgspec.field(default_factory=JobSettings)

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else Path.home() / ".cache" / "vlm-gateway"


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = _parse_env_value(raw)
    return tree


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


class SettingsError(ValueError):
    """The configuration file or environment is invalid."""


def load_settings(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Read the TOML file (``path``, else ``$VLM_GATEWAY_CONFIG``, else none) and apply the environment."""
    environ = dict(os.environ if environ is None else environ)
    path = path or environ.get(ENV_PREFIX + "CONFIG")
    data: dict[str, Any] = {}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read config {path}: {exc}") from exc
    data = _merge(data, _env_overrides(environ))
    try:
        return msgspec.convert(data, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"invalid configuration: {exc}") from exc
