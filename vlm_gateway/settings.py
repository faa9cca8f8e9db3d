"""One typed settings object, loaded once: a TOML file, then ``VLM_GATEWAY_*`` environment overrides.

Environment names map onto the Struct tree with ``__`` between levels, e.g.::

    VLM_GATEWAY_PORT=9000
    VLM_GATEWAY_REDIS_URL=redis://127.0.0.1:6379/0
    VLM_GATEWAY_IMAGES__MAX_IMAGE_BYTES=1000000

Values are parsed as TOML scalars where they can be (numbers, booleans, arrays), else kept as strings; a
value for a text field is always its text (a numeric secret stays a string). A list's entries (``models``)
have no names here: such a list is set whole (a TOML array), in the file or one variable.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec
import msgspec.inspect as mi

from vlm_gateway.batches.settings import BatchSettings
from vlm_gateway.files.settings import FileSettings
from vlm_gateway.jobs.settings import JobSettings
from vlm_gateway.limits.settings import LimitSettings
from vlm_gateway.responses_api.settings import ResponsesSettings

ENV_PREFIX = "VLM_GATEWAY_"


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - reading it raises for a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


class EngineSettings(msgspec.Struct, forbid_unknown_fields=True):
    """Servers of a model's engine pool (``vlm_gateway.engines.pool``).

    ``embedded``: the gateway starts and supervises a vLLM server on this machine (``args`` are extra
    vLLM engine arguments). ``remote``: vLLM servers started with ``--enable-scale-out`` at ``urls``
    (the gateway sends them token ids). ``openai``: OpenAI-compatible chat servers at ``urls`` (base URLs
    ending in ``/v1``: stock vLLM without scale-out, an older vLLM, SGLang, a hosted
    API), which render the prompt themselves; ``model`` is their model name (default: the model's id),
    ``api_key_env`` the environment variable that holds their API key (``serve`` refuses to start while it
    is unset). ``urls`` are http(s) URLs with a host.

    The pool-wide fields (``routing``, ``request_timeout_s``, ``slow_start_s``) are read from the model's
    ``engine`` entry; ``engines`` entries add servers of other kinds to the same pool.
    """

    kind: Literal["embedded", "remote", "openai"] = "embedded"
    urls: list[str] = []
    args: list[str] = []
    env: dict[str, str] = {}
    port: int = 0  # embedded: the vLLM server's loopback port (0 = any free port)
    model: str = ""  # openai: the upstream's model name ("" = the model's id)
    api_key_env: str = ""  # openai: the environment variable holding the upstream's API key
    started_here: bool = False  # (set by ``workers`` > 1) an embedded group its supervisor runs, as remote
    request_timeout_s: float = 600.0
    routing: Literal["affinity", "least_loaded"] = "affinity"  # pools of several servers: vlm_gateway/routing
    slow_start_s: float = 30.0  # a server back in rotation gets its full share of requests over this time
    # "gateway": images of families with an ``image_processor`` go to vLLM servers as the model's input, made
    # by the gateway from the checkpoint's preprocessor_config.json (vlm_gateway/images/features.py); set
    # "engine" for an engine started with other processor arguments or --no-mm-device-do-normalize
    preprocess: Literal["gateway", "engine"] = "gateway"
    preprocess_max_bytes: int = 1024 * 1024  # a larger input is not made: that request sends its images
    # an image (or, with "gateway", its input) a vLLM server was already sent goes by its key alone (vLLM's
    # default `lru` multimodal processor cache, one API server); false for engines with --api-server-count > 1
    # or --mm-processor-cache-gb 0, where a key alone fails the request
    engine_image_cache: bool = True

    def __post_init__(self) -> None:
        """A URL without its scheme (``127.0.0.1:8000``) would be probed, fail, and leave the model down."""
        for url in self.urls:
            if not _is_http_url(url):
                raise ValueError(f"urls: {url!r} is not an http(s) URL with a host, such as http://10.0.0.5:8000")


class ModelSettings(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    checkpoint: str
    family: str | None = None  # detected from the checkpoint's config.json when absent
    aliases: list[str] = []
    tokenizer: str | None = None  # defaults to the checkpoint
    max_images: int | None = None  # defaults to the family's limit
    context_length: int | None = None  # None: what the engine reports (its max_model_len)
    images_before_text: bool | None = None  # defaults to the family's rule
    owned_by: str = "vlm-gateway"
    # true: fields a request leaves out take the checkpoint's generation_config.json defaults, as on vLLM's
    # own chat route (Qwen2.5-VL: top_k 1, top_p 0.001, repetition_penalty 1.05); false: OpenAI's defaults
    generation_config: bool = False
    engine: EngineSettings = msgspec.field(default_factory=EngineSettings)
    engines: list[EngineSettings] = []  # more servers in the same pool, of any kind (see EngineSettings)


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
    cache_max_bytes: int = 256 * 1024 * 1024  # per in-memory cache (fetched bytes; sized results); a quarter
    # of it for the data URIs seen lately (their text, so a resent one is neither decoded nor hashed again)
    cache_ttl_s: int = 3600


class Settings(msgspec.Struct, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 8000
    redis_url: str = ""  # empty: in-process state (single replica)
    workers: int = 1  # gateway processes on one port (vlm_gateway/workers.py); more than 1 needs redis_url
    max_request_bytes: int = 10 * 1024 * 1024
    cache_dir: str = ""  # tiny checkpoints etc.; defaults to ~/.cache/vlm-gateway
    templates_dir: str = ""  # families.toml + <family>.jinja; defaults to the package's own templates/
    log_level: str = "info"
    playground: bool = True  # serve the /playground page (and redirect / to it); false: both are 404
    # origins whose web pages may call the API from a browser (CORS), e.g. ["https://app.example.com"];
    # ["*"]: any; empty: none (the playground is same-origin and needs none)
    cors_origins: list[str] = []
    models: list[ModelSettings] = []
    images: ImageSettings = msgspec.field(default_factory=ImageSettings)
    limits: LimitSettings = msgspec.field(default_factory=LimitSettings)
    jobs: JobSettings = msgspec.field(default_factory=JobSettings)
    files: FileSettings = msgspec.field(default_factory=FileSettings)
    responses: ResponsesSettings = msgspec.field(default_factory=ResponsesSettings)
    batches: BatchSettings = msgspec.field(default_factory=BatchSettings)

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else Path.home() / ".cache" / "vlm-gateway"


def _parse_env_value(raw: str, target: Any) -> Any:
    """``raw`` as a TOML value, except for a text field (``str``, ``str | None``): its text as it is."""
    types = target.types if isinstance(target, mi.UnionType) else (target,)
    if any(isinstance(t, mi.StrType) for t in types):
        return raw
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _field_type(root: Any, path: list[str], name: str) -> Any:
    """The type (``msgspec.inspect``) of the field the variable ``name`` sets; None where there is no such
    field (validation names it). ``SettingsError`` for a path through a list's entries."""
    node = root
    for depth, key in enumerate(path):
        while isinstance(node, mi.UnionType):  # `X | None`: X
            node = next((t for t in node.types if not isinstance(t, mi.NoneType)), None)
        if isinstance(node, mi.ListType):
            field = ".".join(path[:depth])
            raise SettingsError(
                f"invalid configuration: environment variable {name} sets a field inside `{field}`, a list whose "
                f"entries cannot be set one field at a time. Fix: set the whole list in the config file, or as "
                f"{ENV_PREFIX}{'__'.join(path[:depth]).upper()} (a TOML array of tables)")
        if isinstance(node, mi.StructType):
            node = next((f.type for f in node.fields if f.encode_name == key), None)
        elif isinstance(node, mi.DictType):
            node = node.value_type
        else:
            return None
    return node


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    root = mi.type_info(Settings)
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = _parse_env_value(raw, _field_type(root, path, name))
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
    """A start-up mistake in the configuration file, the environment or the command line.

    Its message is one line naming the problem and its fix; ``vlm-gateway`` prints it and exits 2.
    """

    @classmethod
    def invalid(cls, exc: Exception, path: str | Path | None, file_data: dict[str, Any],
                environ: dict[str, str]) -> SettingsError:
        """The error for a ``msgspec.ValidationError`` (or a ``ValueError`` of a ``__post_init__``):
        names the field path (``limits.foo``), where its value came from (the file, the environment
        variable) and the fix."""
        import re

        text = " ".join(str(exc).split())
        match = re.fullmatch(r"(.*?)(?: - at `\$(.*)`)?", text)
        detail, at = (match.group(1), match.group(2) or "") if match else (text, "")
        segments: list[str | int] = []
        for m in re.finditer(r"\.([^.\[\]]+)|\[(\d+)\]|\[([^\]]*)\]", at):
            segments.append(m.group(1) if m.group(1) is not None
                            else int(m.group(2)) if m.group(2) is not None else f"[{m.group(3)}]")

        def dotted(segs: list[str | int]) -> str:
            return "".join(f"[{s}]" if isinstance(s, int) else s if s.startswith("[") else f".{s}"
                           for s in segs).lstrip(".")

        def type_at(segs: list[str | int]) -> Any:
            node: Any = mi.type_info(Settings)
            for seg in segs:
                while isinstance(node, mi.UnionType):
                    node = next((t for t in node.types if not isinstance(t, mi.NoneType)), None)
                if isinstance(node, mi.StructType) and isinstance(seg, str):
                    node = next((f.type for f in node.fields if f.encode_name == seg), None)
                elif isinstance(node, mi.ListType) and isinstance(seg, int):
                    node = node.item_type
                elif isinstance(node, mi.DictType):
                    node = node.value_type
                else:
                    return None
            return node

        unknown = re.fullmatch(r"Object contains unknown field `(.*)`", detail)
        missing = re.fullmatch(r"Object missing required field `(.*)`", detail)
        expected = re.fullmatch(r"Expected `(.*)`, got `(.*)`", detail)
        if unknown:
            segments.append(unknown.group(1))
        field = dotted(segments)

        # Where the value came from: environment variables covering the field (they replace the file's
        # value), else the file and any environment variables below it.
        keys: list[str] = []
        for seg in segments:
            if not isinstance(seg, str) or seg.startswith("["):  # a list index or a dict's key
                break
            keys.append(seg)
        env_paths = [(name, name[len(ENV_PREFIX):].lower().split("__")) for name in sorted(environ)
                     if name.startswith(ENV_PREFIX) and name != ENV_PREFIX + "CONFIG"]
        sources = [f"environment variable {name}" for name, p in env_paths if p == keys[: len(p)]]
        if not sources:
            node: Any = file_data
            found = bool(path)
            for seg in segments:
                if isinstance(seg, str) and seg.startswith("["):  # some key of a dict: it is there
                    break
                in_dict = isinstance(node, dict) and isinstance(seg, str) and seg in node
                in_list = isinstance(node, list) and isinstance(seg, int) and seg < len(node)
                if not (in_dict or in_list):
                    found = False
                    break
                node = node[seg]
            if found:
                sources.append(f"config file {path}")
            sources += [f"environment variable {name}" for name, p in env_paths if p[: len(keys)] == keys]
        where = f" (from {' and '.join(sources)})" if sources else ""

        if unknown:
            parent = type_at(segments[:-1])
            known = [f.encode_name for f in parent.fields] if isinstance(parent, mi.StructType) else []
            fix = "remove it or correct its name" + (f" (known fields here: {', '.join(known)})" if known else "")
            return cls(f"invalid configuration: unknown field `{field}`{where}. Fix: {fix}")
        if missing:
            name = missing.group(1)
            return cls(f"invalid configuration: `{field or 'the configuration'}` lacks its required field "
                       f"`{name}`{where}. Fix: add `{name}` to it")
        if detail.startswith("Invalid enum value"):
            literal = type_at(segments)
            values = ", ".join(map(str, literal.values)) if isinstance(literal, mi.LiteralType) else ""
            fix = f"set `{field}` to one of: {values}" if values else f"correct `{field}`"
            return cls(f"invalid configuration: `{field}`: {detail[0].lower()}{detail[1:]}{where}. Fix: {fix}")
        if expected:
            return cls(f"invalid configuration: `{field}` must be of type {expected.group(1)}, not "
                       f"{expected.group(2)}{where}. Fix: give `{field}` a value of type {expected.group(1)}")
        # a __post_init__ check (e.g. "limits.window_s must be positive"): its text names the rule
        context = [f"in `{field}`"] if field and field not in detail else []
        context += [f"from {' and '.join(sources)}"] if sources else []
        paren = f" ({', '.join(context)})" if context else ""
        fix = f"change the setting{'s' if ' and ' in detail else ''} it names" + (f" under `{field}`" if field else "")
        return cls(f"invalid configuration: {detail}{paren}. Fix: {fix}")


def load_settings(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Read the TOML file (``path``, else ``$VLM_GATEWAY_CONFIG``, else none) and apply the environment.

    ``SettingsError`` (one line: the problem, where it came from, the fix) when either is invalid."""
    environ = dict(os.environ if environ is None else environ)
    path = path or environ.get(ENV_PREFIX + "CONFIG")
    data: dict[str, Any] = {}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise SettingsError(f"cannot read config {path}: {exc.strerror or exc}. Fix: pass --config (or set "
                                f"{ENV_PREFIX}CONFIG) naming a readable TOML file") from exc
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            reason = " ".join(str(exc).split())
            raise SettingsError(f"cannot read config {path}: not valid TOML ({reason}). Fix: correct the file's "
                                "TOML syntax") from exc
    merged = _merge(data, _env_overrides(environ))
    try:
        return msgspec.convert(merged, Settings, strict=False)
    except (msgspec.ValidationError, ValueError, TypeError) as exc:
        raise SettingsError.invalid(exc, path, data, environ) from exc
