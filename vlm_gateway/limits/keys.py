"""API keys: ``vlm-`` secrets, stored only as their sha256, looked up afresh on every request.

Keys come from two places, both read by ``KeyStore``:

* the config file (``[[limits.keys]]``, ``LimitSettings.keys``): the embedded default, no Redis;
* the state backend's ``keys`` hash (field: sha256 hex → ``ApiKey`` JSON): created, listed and revoked
  with ``vlm-gateway keys …`` against the shared Redis, seen by every replica on its next request.

Nothing is cached between requests, so a revocation takes effect on the next one. Queued jobs and batch
lines run under their key's id: ``revoked(key_id)`` (the ``revoked`` hash, written on revocation; a
config-file key removed from the file counts as revoked) stops them when they come to run.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Sequence

import msgspec

from vlm_gateway.errors import InvalidRequest, NotFound
from vlm_gateway.limits.settings import DEFAULT_CONCURRENCY, DEFAULT_RPM, ConfigKey
from vlm_gateway.state import StateBackend

SECRET_PREFIX = "vlm-"
KEYS_HASH = "keys"  # the state backend hash holding stored keys
REVOKED_HASH = "revoked_keys"  # key id -> when it was revoked (s), for work queued under it


class ApiKey(msgspec.Struct, frozen=True):
    """One API key. ``hash`` is the sha256 hex of the secret; ``models`` None means every model.

    ``id`` is ``key_…`` for stored keys and ``cfg-<hash prefix>`` for config-file keys (stable across
    replicas, so their limits are shared too).
    """

    id: str
    name: str
    hash: str
    rpm: int = DEFAULT_RPM
    concurrency: int = DEFAULT_CONCURRENCY
    tpm: int | None = None
    models: tuple[str, ...] | None = None
    created: float = 0.0  # unix time; 0 for config-file keys
    revoked: bool = False

    @property
    def from_config(self) -> bool:
        return self.id.startswith("cfg-")


_DECODER = msgspec.json.Decoder(ApiKey)


def new_secret() -> str:
    """``vlm-`` and 40 url-safe characters (240 random bits)."""
    return SECRET_PREFIX + secrets.token_urlsafe(30)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key(name: str, rpm: int = DEFAULT_RPM, concurrency: int = DEFAULT_CONCURRENCY, tpm: int | None = None,
            models: Sequence[str] | None = None) -> tuple[str, ApiKey]:
    """A fresh secret and its record (not stored anywhere yet)."""
    name = name.strip()
    if not name:
        raise InvalidRequest("a key needs a name", param="name")
    for field, value in (("rpm", rpm), ("concurrency", concurrency), ("tpm", tpm)):
        if value is not None and value < 0:  # (a typo must not make an unlimited key: 0 says "no limit")
            raise InvalidRequest(f"{field} must be 0 (no limit) or more, not {value}", param=field)
    cleaned = None if models is None else tuple(m.strip() for m in models if m.strip())
    if cleaned == ():
        raise InvalidRequest("models, when given, must name at least one model", param="models")
    secret = new_secret()
    key = ApiKey(id="key_" + uuid.uuid4().hex[:16], name=name, hash=hash_secret(secret), rpm=rpm,
                 concurrency=concurrency, tpm=tpm, models=cleaned, created=time.time())
    return secret, key


def config_id(digest: str) -> str:
    """The id of a config-file key: derived from its hash, so every replica agrees on it."""
    return "cfg-" + digest[:12]


def from_config(entry: ConfigKey) -> ApiKey:
    models = None if entry.models is None else tuple(entry.models)
    return ApiKey(id=config_id(entry.hash), name=entry.name, hash=entry.hash, rpm=entry.rpm,
                  concurrency=entry.concurrency, tpm=entry.tpm, models=models)


def _toml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def toml_snippet(key: ApiKey) -> str:
    """The ``[[limits.keys]]`` table to paste into the gateway's config file."""
    lines = ["[[limits.keys]]", f"name = {_toml_string(key.name)}", f'hash = "{key.hash}"',
             f"rpm = {key.rpm}", f"concurrency = {key.concurrency}"]
    if key.tpm is not None:
        lines.append(f"tpm = {key.tpm}")
    if key.models is not None:
        lines.append("models = [" + ", ".join(_toml_string(m) for m in key.models) + "]")
    return "\n".join(lines) + "\n"


class KeyStore:
    """Config-file keys plus (when ``state`` is given) keys stored in the state backend."""

    def __init__(self, state: StateBackend | None, config_keys: Sequence[ConfigKey] = ()) -> None:
        self.state = state
        self._config = {entry.hash: from_config(entry) for entry in config_keys}

    @property
    def config_keys(self) -> int:
        return len(self._config)

    async def lookup(self, secret: str) -> ApiKey | None:
        """The key whose secret this is (revoked ones included: the caller decides), else None.

        Records are found by the secret's sha256, then the digests are compared with
        ``hmac.compare_digest``, so no timing depends on how much of a guess was right.
        """
        digest = hash_secret(secret)
        key = self._config.get(digest)
        if key is None and self.state is not None:
            raw = await self.state.hash_get(KEYS_HASH, digest)
            key = None if raw is None else _DECODER.decode(raw)
        if key is None or not hmac.compare_digest(key.hash, digest):
            return None
        return key

    async def revoked(self, key_id: str) -> bool:
        """Whether work queued under ``key_id`` must no longer run: the key was revoked, or it was a
        config-file key that the file no longer holds."""
        if key_id.startswith("cfg-"):
            return not any(key.id == key_id for key in self._config.values())
        if self.state is None or not key_id.startswith("key_"):
            return False
        return await self.state.hash_get(REVOKED_HASH, key_id) is not None

    async def count(self) -> int:
        """Keys known at all, revoked ones included (revoking every key must not open the gateway)."""
        stored = await self.state.hash_len(KEYS_HASH) if self.state is not None else 0
        return len(self._config) + stored

    async def create(self, name: str, rpm: int = DEFAULT_RPM, concurrency: int = DEFAULT_CONCURRENCY,
                     tpm: int | None = None, models: Sequence[str] | None = None) -> tuple[str, ApiKey]:
        """Store a new key; returns ``(secret, key)``. The secret is not kept anywhere: show it once."""
        if self.state is None:
            raise InvalidRequest("no key store: add the key to the config file instead (see toml_snippet)")
        secret, key = new_key(name, rpm, concurrency, tpm, models)
        await self.state.hash_set(KEYS_HASH, key.hash, msgspec.json.encode(key))
        return secret, key

    async def _stored(self) -> list[ApiKey]:
        if self.state is None:
            return []
        return [_DECODER.decode(raw) for raw in (await self.state.hash_all(KEYS_HASH)).values()]

    async def list(self) -> list[ApiKey]:
        """Every key, config-file ones first, then stored ones oldest first."""
        return [*self._config.values(), *sorted(await self._stored(), key=lambda k: (k.created, k.id))]

    async def revoke(self, key_id: str) -> ApiKey:
        """Mark a stored key revoked (it stays listed); every replica refuses it from its next request."""
        if any(key.id == key_id for key in self._config.values()):
            raise InvalidRequest(f"{key_id} is a config-file key: remove it from the config file to revoke it")
        for key in await self._stored():
            if key.id == key_id:
                revoked = msgspec.structs.replace(key, revoked=True)
                await self.state.hash_set(REVOKED_HASH, key.id, str(time.time()).encode())  # type: ignore[union-attr]
                await self.state.hash_set(KEYS_HASH, key.hash, msgspec.json.encode(revoked))  # type: ignore[union-attr]
                return revoked
        raise NotFound(f"no API key with id {key_id}")
