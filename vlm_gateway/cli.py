"""vlm-gateway serve | render | keys | build-tiny

``serve`` with no model configured builds a tiny random-weight checkpoint and serves it (the offline
default: it answers with random text).
"""

from __future__ import annotations

import argparse
import errno
import gc
import importlib.util
import json
import os
import socket
import sys
from pathlib import Path

import msgspec

from vlm_gateway import logs, workers
from vlm_gateway.settings import EngineSettings, ModelSettings, Settings, SettingsError, load_settings

DEFAULT_TINY_FAMILY = "qwen2_5_vl"
TINY_EXTRA = ("torch", "transformers", "safetensors", "numpy")  # what building a tiny checkpoint imports
LOG_LEVELS = tuple(logs.LEVELS)  # uvicorn's
# The serving process collects its youngest generation every this many new objects (CPython 3.11: 700).
GC_YOUNG_THRESHOLD = 10_000


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--config", help="TOML settings file (else $VLM_GATEWAY_CONFIG)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int, help="gateway processes on the port (default 1; more need redis_url)")
    p.add_argument("--model", action="append", default=[], metavar="PATH_OR_ID",
                   help="serve this checkpoint (repeatable); its family is read from its config.json")
    p.add_argument("--engine-url", action="append", default=[], metavar="URL",
                   help="send the --model to this running vLLM server (--enable-scale-out) instead of an "
                        "embedded engine (repeatable: several servers of the same model)")
    p.add_argument("--family", metavar="F",
                   help="the family of the --model checkpoints (default: read from their config.json)")


def _with_cli_models(settings: Settings, models: list[str], engine_urls: list[str],
                     family: str | None = None) -> Settings:
    if engine_urls and len(models) != 1:
        raise SettingsError("--engine-url needs exactly one --model. Fix: pass one --model with --engine-url")
    if family and not models:
        raise SettingsError("--family applies to the --model checkpoints, and none is given. Fix: pass --model "
                            "too (or set `family` in the model entry of the config)")
    try:
        engine = EngineSettings(kind="remote", urls=engine_urls) if engine_urls else EngineSettings()
    except ValueError as exc:  # a URL without its scheme or host
        raise SettingsError(f"--engine-url: {str(exc).removeprefix('urls: ')}. Fix: pass the vLLM server's "
                            "URL with its scheme and host") from None
    entries = [ModelSettings(id=Path(m).name if Path(m).exists() else m, checkpoint=m, family=family,
                             engine=engine)
               for m in models]
    return msgspec.structs.replace(settings, models=[*settings.models, *entries])


def _check_port(host: str, port: int) -> None:
    """``SettingsError`` unless ``host:port`` can be listened on. Binds as uvicorn does (each address of
    ``host``, SO_REUSEADDR on where asyncio sets it, so a port whose old connections linger in TIME_WAIT
    is not refused), then closes: only a socket another process holds fails."""
    where = "pass --host (or set host in the config)"
    if not 0 <= port <= 65535:
        raise SettingsError(f"port {port} is out of range. Fix: pass --port between 1 and 65535 (or set port in "
                            "the config)")
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise SettingsError(f"cannot listen on host {host!r}: {getattr(exc, 'strerror', None) or exc}. Fix: "
                            f"{where}") from None
    for family, kind, proto, address in {(info[0], info[1], info[2], info[4]) for info in infos}:
        try:
            with socket.socket(family, kind, proto) as sock:
                if os.name == "posix":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise SettingsError(f"port {port} on {host or 'all interfaces'} is already in use. Fix: stop the "
                                    "other process or "
                                    "pass --port (or set port in the config)") from None
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise SettingsError(f"no permission to listen on port {port} on {host}. Fix: pass --port 1024 or "
                                    "above (or set port in the config)") from None
            raise SettingsError(f"cannot listen on {host}:{port}: {exc.strerror or exc}. Fix: {where}") from None


def _with_tiny_default(settings: Settings) -> Settings:
    fix = "pip install 'vlm-gateway[tiny]' (or configure a model: --model, or [[models]] in the config)"
    try:
        from vlm_gateway.testing.tiny import ensure_tiny, is_complete

        cache = settings.cache_path / "tiny"
        if not is_complete(cache.resolve() / DEFAULT_TINY_FAMILY, DEFAULT_TINY_FAMILY):
            missing = [name for name in TINY_EXTRA if importlib.util.find_spec(name) is None]
            if missing:
                raise SettingsError(f"no model is configured, and the offline default needs the tiny extra "
                                    f"(missing: {', '.join(missing)}). Fix: {fix}")
        print(f"No model configured: serving a tiny random-weight {DEFAULT_TINY_FAMILY} checkpoint "
              "(it answers with random text).", file=sys.stderr)
        path = ensure_tiny(DEFAULT_TINY_FAMILY, cache)
    except ImportError as exc:
        raise SettingsError(f"no model is configured, and the offline default needs the tiny extra "
                            f"(cannot import {exc.name or exc}). Fix: {fix}") from None
    except OSError as exc:
        raise SettingsError(f"cannot build the tiny default checkpoint in {settings.cache_path / 'tiny'}: "
                            f"{exc.strerror or exc}. Fix: set cache_dir (VLM_GATEWAY_CACHE_DIR) to a writable "
                            "directory, or configure a model") from None
    entry = ModelSettings(id=f"tiny-{DEFAULT_TINY_FAMILY.replace('_', '-')}", checkpoint=str(path),
                          family=DEFAULT_TINY_FAMILY, aliases=["default"])
    return msgspec.structs.replace(settings, models=[entry])


def _check_engine_keys(settings: Settings, environ: dict[str, str] | os._Environ[str]) -> None:
    """``SettingsError`` for an ``openai`` engine whose ``api_key_env`` names an unset variable: its requests
    would go unauthenticated (an upstream without a key is configured by leaving ``api_key_env`` out)."""
    for entry in settings.models:
        for group in (entry.engine, *entry.engines):
            if group.api_key_env and not environ.get(group.api_key_env):
                raise SettingsError(f"model {entry.id!r}: its engine's api_key_env names {group.api_key_env}, which "
                                    f"is not set (or empty). Fix: export {group.api_key_env}=<the upstream's API "
                                    "key>, or remove api_key_env for an upstream that needs no key")


def _is_local(checkpoint: str) -> bool:
    """A checkpoint named as a directory (not a Hugging Face id); the rule of ``checkpoint_file``."""
    path = Path(checkpoint)
    return (path.exists() or path.is_absolute() or checkpoint.startswith((".", "~"))
            or checkpoint.count("/") > 1)


def _check_models(settings: Settings, from_cli: set[int]) -> None:
    """``SettingsError`` for the first model whose family is unknown or whose checkpoint or tokenizer cannot
    be read: caught here, before uvicorn starts (its lifespan would print a traceback instead)."""
    from vlm_gateway.prompts.families import UnknownFamily, checkpoint_file, family_for_checkpoint, load_families

    try:
        families = load_families(settings.templates_dir or None)
    except (OSError, ValueError) as exc:  # missing families.toml, bad TOML, bad family data
        reason = " ".join(str(exc).split())
        raise SettingsError(f"cannot load the model families from templates_dir {settings.templates_dir!r}: "
                            f"{reason}. Fix: point templates_dir at a folder holding families.toml (or leave it "
                            "empty for the built-in templates)") from None
    names = ", ".join(families)
    for index, entry in enumerate(settings.models):
        cli = index in from_cli
        where = "--model" if cli else "`checkpoint`"
        readable = (f"Fix: point {where} at a directory holding config.json and tokenizer.json, or a Hugging "
                    "Face id available offline")

        def read(name: str, source: str, fix: str, entry: ModelSettings = entry) -> Path:
            try:
                path = checkpoint_file(source, name)
                if name == "config.json":
                    with open(path, encoding="utf-8") as f:
                        json.load(f)
                else:
                    from tokenizers import Tokenizer

                    Tokenizer.from_file(str(path))
                return path
            except Exception as exc:  # noqa: BLE001 - missing, unreadable, not JSON, not a tokenizer
                reason = " ".join(str(exc).split()) or type(exc).__name__
                what = "checkpoint" if source == entry.checkpoint else "tokenizer"
                raise SettingsError(f"model {entry.id!r}: cannot read its {what} {source!r} ({name}: {reason}). "
                                    f"{fix}") from None

        needs_config = entry.family is None or any(e.kind == "embedded" for e in (entry.engine, *entry.engines))
        local = _is_local(entry.checkpoint)
        if needs_config and local:
            read("config.json", entry.checkpoint, readable)
        family = entry.family
        if family is None:
            try:
                family = family_for_checkpoint(entry.checkpoint, families)
            except UnknownFamily as exc:
                fix = (f"pass --family (one of: {names}) or set `family` in the model entry" if cli
                       else f"set `family` in the model entry (one of: {names})")
                raise SettingsError(f"model {entry.id!r}: {exc}. Fix: {fix}") from None
        elif entry.family not in families:
            fix = f"pass --family one of: {names}" if cli else f"set `family` to one of: {names}"
            raise SettingsError(f"model {entry.id!r}: unknown family {entry.family!r}. Fix: {fix}")
        elif needs_config and not local:
            read("config.json", entry.checkpoint, readable)
        unembeddable = families[family].no_embedded_engine
        if unembeddable and any(e.kind == "embedded" for e in (entry.engine, *entry.engines)):
            raise SettingsError(f"model {entry.id!r}: {unembeddable}")
        if entry.tokenizer:
            read("tokenizer.json", entry.tokenizer, "Fix: point `tokenizer` at a directory holding tokenizer.json, "
                 "or a Hugging Face id available offline (or leave it out to use the checkpoint's)")
        else:
            read("tokenizer.json", entry.checkpoint, readable if cli else readable.replace(
                "`checkpoint`", "`checkpoint` (or `tokenizer`)"))


def settle_heap() -> None:
    """Once the gateway is up (a start-up hook): what it loaded to serve (modules, the app, tokenizers,
    templates) leaves the garbage collector's scans, and the youngest generation is collected less often.
    A request leaves few cycles behind, yet the collector was 6-7 % of the gateway's CPU under load
    (perf, against a scripted engine at 260 req/s); with this it is under 0.1 % (bench/README.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def serve(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("workers", args.workers))
                 if v is not None}
    settings = msgspec.structs.replace(settings, **overrides)
    if settings.log_level.lower() not in LOG_LEVELS:
        raise SettingsError(f"invalid configuration: log_level {settings.log_level!r} is not a log level. Fix: set "
                            f"log_level to one of: {', '.join(LOG_LEVELS)}")
    configured = len(settings.models)
    settings = _with_cli_models(settings, args.model, args.engine_url, args.family)
    _check_port(settings.host, settings.port)  # first: fast, and the most common mistake
    workers.check(settings)
    _check_engine_keys(settings, os.environ)
    if not settings.models:
        settings = _with_tiny_default(settings)
    _check_models(settings, set(range(configured, len(settings.models))))
    if any(e.kind == "embedded" for m in settings.models for e in (m.engine, *m.engines)):
        from vlm_gateway.engines.vllm_launch import vllm_conflict

        if conflict := vllm_conflict():
            raise SettingsError(conflict)

    logs.configure(settings.log_level)
    if settings.workers > 1:
        return workers.serve(settings)

    import uvicorn

    from vlm_gateway.app import create_app

    app = create_app(settings)
    app.on_startup.append(settle_heap)  # after the lifespan has loaded everything
    print(f"vlm-gateway on http://{settings.host}:{settings.port}/v1 serving "
          + ", ".join(m.id for m in settings.models), file=sys.stderr)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(), access_log=False,
                log_config=None)  # uvicorn's loggers write through the root logger: one format (vlm_gateway.logs)
    return 0


def build_tiny(args: argparse.Namespace) -> int:
    """Its mistakes as ``serve``'s: one line, exit 2."""
    from vlm_gateway.testing.tiny import FAMILIES
    from vlm_gateway.testing.tiny import build_tiny as build

    if args.family not in FAMILIES:
        raise SettingsError(f"unknown tiny family {args.family!r}. Fix: pass --family one of: {', '.join(FAMILIES)}")
    try:
        path = build(args.family, Path(args.out))
    except OSError as exc:
        raise SettingsError(f"cannot write the tiny checkpoint to {args.out}: {exc.strerror or exc}. Fix: pass --out "
                            "naming a directory that can be written") from None
    except ImportError as exc:
        raise SettingsError(f"building a tiny checkpoint needs the tiny extra (cannot import {exc.name or exc}). "
                            "Fix: pip install 'vlm-gateway[tiny]'") from None
    print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["render"]:  # the prompt debugger imports no engine code and answers fast
        from vlm_gateway.prompts.cli import main as render_main

        return render_main(argv[1:])
    if argv[:1] == ["keys"]:
        from vlm_gateway.limits.cli import main as keys_main

        return keys_main(argv[1:])
    parser = argparse.ArgumentParser(prog="vlm-gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    sub.add_parser("render", help="print a conversation's exact prompt (see `vlm-gateway render -h`)")
    sub.add_parser("keys", help="create, list and revoke API keys (see `vlm-gateway keys -h`)")
    tiny = sub.add_parser("build-tiny", help="write a tiny random-weight checkpoint")
    tiny.add_argument("--family", required=True)
    tiny.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        return {"serve": serve, "build-tiny": build_tiny}[args.command](args)
    except SettingsError as exc:  # a start-up mistake: one line naming it and its fix, no traceback
        print(f"vlm-gateway: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
