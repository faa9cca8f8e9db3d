"""vlm-gateway serve | render | keys | build-tiny

``serve`` with no model configured builds a tiny random-weight checkpoint and serves it (the offline
default: it answers with random text).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import msgspec

from vlm_gateway.settings import EngineSettings, ModelSettings, Settings, SettingsError, load_settings

DEFAULT_TINY_FAMILY = "qwen2_5_vl"


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--config", help="TOML settings file (else $VLM_GATEWAY_CONFIG)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--model", action="append", default=[], metavar="PATH_OR_ID",
                   help="serve this checkpoint (repeatable); its family is read from its config.json")
    p.add_argument("--engine-url", action="append", default=[], metavar="URL",
                   help="send the --model to this running vLLM server (--enable-scale-out) instead of an "
                        "embedded engine (repeatable: several servers of the same model)")


def _with_cli_models(settings: Settings, models: list[str], engine_urls: list[str]) -> Settings:
    if engine_urls and len(models) != 1:
        raise SettingsError("--engine-url needs exactly one --model")
    engine = EngineSettings(kind="remote", urls=engine_urls) if engine_urls else EngineSettings()
    entries = [ModelSettings(id=Path(m).name if Path(m).exists() else m, checkpoint=m, engine=engine)
               for m in models]
    return msgspec.structs.replace(settings, models=[*settings.models, *entries])


def _with_tiny_default(settings: Settings) -> Settings:
    from vlm_gateway.testing.tiny import ensure_tiny

    print(f"No model configured: serving a tiny random-weight {DEFAULT_TINY_FAMILY} checkpoint "
          "(it answers with random text).", file=sys.stderr)
    path = ensure_tiny(DEFAULT_TINY_FAMILY, settings.cache_path / "tiny")
    entry = ModelSettings(id=f"tiny-{DEFAULT_TINY_FAMILY.replace('_', '-')}", checkpoint=str(path),
                          family=DEFAULT_TINY_FAMILY, aliases=["default"])
    return msgspec.structs.replace(settings, models=[entry])


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from vlm_gateway.app import create_app

    settings = load_settings(args.config)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = msgspec.structs.replace(settings, **overrides)
    settings = _with_cli_models(settings, args.model, args.engine_url)
    if not settings.models:
        settings = _with_tiny_default(settings)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    print(f"vlm-gateway on http://{settings.host}:{settings.port}/v1 serving "
          + ", ".join(m.id for m in settings.models), file=sys.stderr)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False)
    return 0


def build_tiny(args: argparse.Namespace) -> int:
    from vlm_gateway.testing.tiny import build_tiny as build

    path = build(args.family, Path(args.out))
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
    except SettingsError as exc:
        print(f"vlm-gateway: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
