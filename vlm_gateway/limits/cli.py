"""``vlm-gateway keys create | list | revoke``: manage API keys.

With ``redis_url`` configured, keys live in the shared Redis: created, listed and revoked there, seen by
every replica on its next request. Without it (the embedded default) the gateway reads keys from its
config file: ``create`` prints the ``[[limits.keys]]`` snippet to paste, ``list`` shows the config
file's keys, and a key is revoked by deleting its snippet.

The secret is printed once and never stored (only its sha256 is).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import msgspec

from vlm_gateway.errors import GatewayError
from vlm_gateway.limits.keys import ApiKey, KeyStore, config_id, new_key, toml_snippet
from vlm_gateway.limits.settings import DEFAULT_CONCURRENCY, DEFAULT_RPM, LimitSettings


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help="TOML settings file (else $VLM_GATEWAY_CONFIG)")
    parser = argparse.ArgumentParser(prog="vlm-gateway keys", description="manage API keys", parents=[common])
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", parents=[common], help="make a key and print its secret once")
    create.add_argument("--name", required=True)
    create.add_argument("--rpm", type=int, default=DEFAULT_RPM, help="requests per minute (0: no limit)")
    create.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                        help="requests at the same time (0: no limit)")
    create.add_argument("--tpm", type=int, help="tokens per minute (default: no limit)")
    create.add_argument("--models", help="comma-separated model ids or aliases this key may use (default: all)")
    sub.add_parser("list", parents=[common], help="list keys (never their secrets)")
    revoke = sub.add_parser("revoke", parents=[common],
                            help="revoke a key; every replica refuses it from its next request")
    revoke.add_argument("id")
    return parser


def _limits_of(settings: Any) -> LimitSettings:
    limits = getattr(settings, "limits", None)
    return limits if isinstance(limits, LimitSettings) else LimitSettings()


def _describe(key: ApiKey) -> str:
    tpm = "no limit" if key.tpm is None else str(key.tpm)
    models = "all" if key.models is None else ", ".join(key.models)
    return f"rpm {key.rpm}, concurrency {key.concurrency}, tpm {tpm}, models {models}"


async def _create(store: KeyStore, args: argparse.Namespace) -> int:
    models = None if args.models is None else args.models.split(",")
    options = {"rpm": args.rpm, "concurrency": args.concurrency, "tpm": args.tpm, "models": models}
    if store.state is not None:
        secret, key = await store.create(args.name, **options)
    else:
        secret, key = new_key(args.name, **options)
        key = msgspec.structs.replace(key, id=config_id(key.hash), created=0.0)  # as the config file will have it
    print(f"Created API key {key.id} {key.name!r} ({_describe(key)}).")
    print(f"Secret (shown once, store it now):\n\n    {secret}\n")
    if store.state is None:
        print("No redis_url is configured: the gateway reads its keys from the config file. "
              "Add this to it and restart:\n")
        print(toml_snippet(key), end="")
    return 0


def _table(keys: list[ApiKey]) -> str:
    rows = [("ID", "NAME", "RPM", "CONC", "TPM", "MODELS", "CREATED", "STATUS")]
    for k in keys:
        created = "config file" if k.from_config else time.strftime("%Y-%m-%d %H:%M", time.localtime(k.created))
        rows.append((k.id, k.name, str(k.rpm), str(k.concurrency), "-" if k.tpm is None else str(k.tpm),
                     "all" if k.models is None else ",".join(k.models), created,
                     "revoked" if k.revoked else "active"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


async def _list(store: KeyStore, _args: argparse.Namespace) -> int:
    keys = await store.list()
    print(_table(keys) if keys else "No API keys: the gateway accepts every request (no limits).")
    return 0


async def _revoke(store: KeyStore, args: argparse.Namespace) -> int:
    key = await store.revoke(args.id)
    print(f"Revoked {key.id} {key.name!r}: every replica refuses it from its next request.")
    return 0


async def _run(args: argparse.Namespace, settings: Any) -> int:
    limits = _limits_of(settings)
    redis = None
    if getattr(settings, "redis_url", ""):
        from redis.asyncio import Redis

        from vlm_gateway.state import RedisState

        redis = Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=5)
    try:
        state = None if redis is None else RedisState(redis, limits.redis_prefix)
        store = KeyStore(state, limits.keys)
        return await {"create": _create, "list": _list, "revoke": _revoke}[args.action](store, args)
    finally:
        if redis is not None:
            await redis.aclose()


def main(argv: list[str] | None = None, settings: Any = None) -> int:
    """Run ``keys …`` (``argv`` with or without the leading ``keys``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["keys"]:
        argv = argv[1:]
    args = _parser().parse_args(argv)
    try:
        config = getattr(args, "config", None)
        if settings is None or config:
            from vlm_gateway.settings import load_settings

            settings = load_settings(config)
        return asyncio.run(_run(args, settings))
    except GatewayError as exc:
        print(f"vlm-gateway keys: {exc.message}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:  # SettingsError is a ValueError
        print(f"vlm-gateway keys: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - e.g. Redis unreachable: say so, no traceback
        print(f"vlm-gateway keys: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
