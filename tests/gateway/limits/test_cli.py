"""``vlm-gateway keys``: create / list / revoke against Redis, and the config-file snippet without it."""

from __future__ import annotations

import asyncio
import re
import tomllib
from types import SimpleNamespace

import msgspec

from tests.gateway.state.fixtures import REDIS_URL
from vlm_gateway.limits import ConfigKey, KeyStore, LimitSettings, hash_secret
from vlm_gateway.limits.cli import main
from vlm_gateway.settings import Settings
from vlm_gateway.state import RedisState

SECRET = re.compile(r"^    (vlm-[A-Za-z0-9_-]{40})$", re.M)


def _settings(redis_url: str = "", prefix: str = "vlm:", keys: list[ConfigKey] | None = None) -> SimpleNamespace:
    """Settings with a ``limits`` section (the shape of Settings once ``limits`` is added to it)."""
    return SimpleNamespace(redis_url=redis_url, limits=LimitSettings(keys=keys or [], redis_prefix=prefix))


async def _cli(capsys, argv: list[str], settings) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(main, argv, settings)  # main runs its own event loop
    out, err = capsys.readouterr()
    return code, out, err


async def test_create_without_redis_prints_the_snippet(capsys) -> None:
    code, out, _ = await _cli(capsys, ["keys", "create", "--name", "acme", "--rpm", "12", "--tpm", "900",
                                       "--models", "qwen,llava"], _settings())
    assert code == 0
    secret = SECRET.search(out).group(1)
    snippet = out[out.index("[[limits.keys]]"):]
    assert secret not in snippet
    limits = msgspec.convert(tomllib.loads(snippet)["limits"], LimitSettings)
    key = await KeyStore(None, limits.keys).lookup(secret)
    assert (key.name, key.rpm, key.concurrency, key.tpm, key.models) == ("acme", 12, 5, 900, ("qwen", "llava"))
    assert key.id in out  # the id it will have once pasted


async def test_without_redis_list_and_revoke_use_the_config_file(capsys) -> None:
    settings = _settings(keys=[ConfigKey(name="cfgkey", hash=hash_secret("vlm-x"))])
    code, out, _ = await _cli(capsys, ["list"], settings)
    assert code == 0 and "cfgkey" in out and "config file" in out
    code, _, err = await _cli(capsys, ["revoke", "cfg-" + hash_secret("vlm-x")[:12]], settings)
    assert code == 1 and "remove it from the config file" in err
    code, out, _ = await _cli(capsys, ["list"], Settings())  # today's Settings, no limits section
    assert code == 0 and "No API keys" in out


async def test_create_list_revoke_on_redis(capsys, redis_client, prefix) -> None:
    settings = _settings(REDIS_URL, prefix)
    code, out, _ = await _cli(capsys, ["create", "--name", "acme", "--concurrency", "2"], settings)
    assert code == 0 and "[[limits.keys]]" not in out
    secret = SECRET.search(out).group(1)
    store = KeyStore(RedisState(redis_client, prefix))
    key = await store.lookup(secret)
    assert key.name == "acme" and key.concurrency == 2 and key.id in out
    code, out, _ = await _cli(capsys, ["list"], settings)
    assert code == 0 and key.id in out and "active" in out and secret not in out
    code, out, _ = await _cli(capsys, ["revoke", key.id], settings)
    assert code == 0 and "Revoked" in out
    assert (await store.lookup(secret)).revoked
    code, out, _ = await _cli(capsys, ["list"], settings)
    assert "revoked" in out
    code, _, err = await _cli(capsys, ["revoke", "key_nope"], settings)
    assert code == 1 and "no API key" in err


async def test_errors_are_messages_not_tracebacks(capsys) -> None:
    from tests.helpers import free_port

    code, _, err = await _cli(capsys, ["list"], _settings(f"redis://127.0.0.1:{free_port()}/0"))
    assert code == 1 and "vlm-gateway keys:" in err and "Traceback" not in err
    code, _, err = await _cli(capsys, ["create", "--name", " "], _settings())
    assert code == 1 and "needs a name" in err


async def test_config_option_loads_settings(capsys, tmp_path) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text("port = 9000\n")
    code, out, _ = await _cli(capsys, ["create", "--config", str(cfg), "--name", "x"], None)
    assert code == 0 and "[[limits.keys]]" in out
    code, _, err = await _cli(capsys, ["list", "--config", str(tmp_path / "missing.toml")], None)
    assert code == 2 and "cannot read config" in err
