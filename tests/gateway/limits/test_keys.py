"""KeyStore: secrets shown once and stored hashed, config-file keys, listing, revocation."""

from __future__ import annotations

import hashlib
import hmac
import re
import tomllib

import msgspec
import pytest

from vlm_gateway.errors import InvalidRequest, NotFound
from vlm_gateway.limits import ApiKey, ConfigKey, KeyStore, LimitSettings, hash_secret, new_key, toml_snippet
from vlm_gateway.limits.keys import KEYS_HASH, new_secret
from vlm_gateway.state import RedisState


def test_secret_format() -> None:
    secrets = {new_secret() for _ in range(100)}
    assert len(secrets) == 100
    assert all(re.fullmatch(r"vlm-[A-Za-z0-9_-]{40}", s) for s in secrets)


def test_new_key_record() -> None:
    secret, key = new_key(" acme ", rpm=10, concurrency=2, tpm=1000, models=["a", " b "])
    assert key.hash == hashlib.sha256(secret.encode()).hexdigest() == hash_secret(secret)
    assert (key.name, key.rpm, key.concurrency, key.tpm, key.models) == ("acme", 10, 2, 1000, ("a", "b"))
    assert key.id.startswith("key_") and key.created > 0 and not key.revoked and not key.from_config
    _, default = new_key("x")
    assert (default.rpm, default.concurrency, default.tpm, default.models) == (30, 5, None, None)
    with pytest.raises(InvalidRequest):
        new_key("  ")
    with pytest.raises(InvalidRequest):
        new_key("x", models=[" "])


async def test_create_stores_only_the_hash(backend) -> None:
    store = KeyStore(backend)
    secret, key = await store.create("acme", rpm=7)
    raw = await backend.hash_get(KEYS_HASH, key.hash)
    assert raw is not None and secret.encode() not in raw and secret[4:].encode() not in raw
    assert msgspec.json.decode(raw, type=ApiKey) == key
    assert await store.lookup(secret) == key
    assert await store.lookup(secret + "x") is None
    assert await store.lookup("") is None


async def test_lookup_compares_in_constant_time(backend, monkeypatch) -> None:
    store = KeyStore(backend, [ConfigKey(name="cfg", hash=hash_secret("vlm-config"))])
    secret, key = await store.create("acme")
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert await store.lookup(secret) == key
    assert calls == [(key.hash, key.hash)]
    assert (await store.lookup("vlm-config")).name == "cfg"
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: False)  # the answer depends on it
    assert await store.lookup(secret) is None and await store.lookup("vlm-config") is None


async def test_list_and_revoke(backend) -> None:
    config = ConfigKey(name="cfg", hash=hash_secret("vlm-config"), models=["m"])
    store = KeyStore(backend, [config])
    _, first = await store.create("first")
    _, second = await store.create("second")
    listed = await store.list()
    assert [k.name for k in listed] == ["cfg", "first", "second"]
    assert listed[0].from_config and listed[0].id == "cfg-" + config.hash[:12] and listed[0].models == ("m",)
    revoked = await store.revoke(first.id)
    assert revoked.revoked and revoked.id == first.id
    assert [k.revoked for k in await store.list()] == [False, True, False]
    assert await store.count() == 3  # revoked keys still count: revoking all must not open the gateway
    with pytest.raises(NotFound):
        await store.revoke("key_nope")
    with pytest.raises(InvalidRequest, match="config file"):
        await store.revoke(listed[0].id)


async def test_revocation_is_seen_by_another_replica(redis_client, second_redis_client, prefix) -> None:
    one = KeyStore(RedisState(redis_client, prefix))
    two = KeyStore(RedisState(second_redis_client, prefix))
    secret, key = await one.create("acme")
    assert (await two.lookup(secret)).revoked is False
    await two.revoke(key.id)
    assert (await one.lookup(secret)).revoked is True


async def test_without_a_store_only_config_keys() -> None:
    store = KeyStore(None, [ConfigKey(name="cfg", hash=hash_secret("vlm-s"))])
    assert await store.count() == 1 and [k.name for k in await store.list()] == ["cfg"]
    assert (await store.lookup("vlm-s")).name == "cfg" and await store.lookup("vlm-t") is None
    with pytest.raises(InvalidRequest):
        await store.create("x")
    with pytest.raises(NotFound):
        await store.revoke("key_x")


@pytest.mark.parametrize("name", ["acme", 'quo"te \\ back', "ünïcode 😀", "new\nline"])
async def test_toml_snippet_round_trip(name) -> None:
    secret, key = new_key(name, rpm=12, concurrency=3, tpm=500, models=["m-1", 'we"ird'])
    snippet = toml_snippet(key)
    assert secret not in snippet and snippet.startswith("[[limits.keys]]\n")
    settings = msgspec.convert(tomllib.loads(snippet)["limits"], LimitSettings)
    found = await KeyStore(None, settings.keys).lookup(secret)
    assert (found.name, found.rpm, found.concurrency, found.tpm, found.models) == (
        name, 12, 3, 500, ("m-1", 'we"ird'))
    minimal = tomllib.loads(toml_snippet(new_key("x")[1]))["limits"]["keys"][0]
    assert "tpm" not in minimal and "models" not in minimal


def test_config_key_validation() -> None:
    assert ConfigKey(name="a", hash="SHA256:" + "AB" * 32).hash == "ab" * 32
    with pytest.raises(msgspec.ValidationError, match="sha256"):
        msgspec.convert({"keys": [{"name": "a", "hash": "secret"}]}, LimitSettings)
    with pytest.raises(msgspec.ValidationError, match="twice"):
        msgspec.convert({"keys": [{"name": "a", "hash": "a" * 64}, {"name": "b", "hash": "a" * 64}]}, LimitSettings)
    with pytest.raises(ValueError, match="renew_interval_s"):
        LimitSettings(lease_ttl_s=1, renew_interval_s=2)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"keys": [{"name": "a", "hash": "a" * 64, "secret": "x"}]}, LimitSettings)
