"""``RedisFiles``: the file backend every replica shares, one atomic Lua script per change.

Layout (every key under ``prefix``, whose hash tag keeps them in one Cluster slot)::

    meta:{id}          the record (msgspec JSON)
    owner:{key_id}     sorted set of the owner's ids, scored by creation time (µs)
    blob:{sha256}      content, stored once per hash
    refs:{sha256}      how many records name that content
    used               content bytes stored (each hash once)
    owner-used:{key}   bytes of the owner's files (each file counted)

Nothing expires. The client is the app's (``decode_responses`` off: content is binary).
"""

from __future__ import annotations

from typing import Any

import msgspec

from vlm_gateway.files.types import FileRecord, over_quota

_ENCODE = msgspec.json.Encoder()
_DECODE = msgspec.json.Decoder(FileRecord)

# KEYS: meta, owner, blob, refs, used, owner-used.
# ARGV: record, id, score, size, quota, owner quota[, content].
# Returns {status, used}: 1 stored with new content, 0 stored (content was there), -1 content needed
# (call again with it), -2 over the store's quota, -3 over the owner's quota.
_ADD = """
local size, quota, owner_quota = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local owner_used = tonumber(redis.call('GET', KEYS[6]) or '0')
if owner_quota > 0 and owner_used + size > owner_quota then return {-3, owner_used} end
local fresh = redis.call('EXISTS', KEYS[3]) == 0
if fresh then
  local used = tonumber(redis.call('GET', KEYS[5]) or '0')
  if quota > 0 and used + size > quota then return {-2, used} end
  if #ARGV < 7 then return {-1, used} end
  redis.call('SET', KEYS[3], ARGV[7])
  redis.call('DEL', KEYS[4])
  redis.call('INCRBY', KEYS[5], size)
end
redis.call('INCR', KEYS[4])
redis.call('INCRBY', KEYS[6], size)
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
return {fresh and 1 or 0, 0}
"""

# KEYS: meta, owner, blob, refs, used, owner-used. ARGV: id, size.
# Returns 0 (the record was gone), 1 (removed), 2 (removed, and its content freed).
_REMOVE = """
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
local size = tonumber(ARGV[2])
if tonumber(redis.call('DECRBY', KEYS[6], size)) <= 0 then redis.call('DEL', KEYS[6]) end
if tonumber(redis.call('DECR', KEYS[4])) > 0 then return 1 end
redis.call('DEL', KEYS[3], KEYS[4])
if tonumber(redis.call('DECRBY', KEYS[5], size)) <= 0 then redis.call('DEL', KEYS[5]) end
return 2
"""


class RedisFiles:
    """Files in Redis (see the module docstring); quotas of 0 mean none."""

    def __init__(self, redis: Any, prefix: str, quota_bytes: int = 0, key_quota_bytes: int = 0) -> None:
        self.redis = redis
        self.prefix = prefix
        self.quota_bytes = quota_bytes
        self.key_quota_bytes = key_quota_bytes
        self._add = redis.register_script(_ADD)
        self._remove = redis.register_script(_REMOVE)

    def _keys(self, record: FileRecord) -> list[str]:
        p = self.prefix
        return [f"{p}meta:{record.id}", f"{p}owner:{record.owner}", f"{p}blob:{record.sha256}",
                f"{p}refs:{record.sha256}", f"{p}used", f"{p}owner-used:{record.owner}"]

    async def add(self, record: FileRecord, data: bytes, *, quota: bool = True) -> None:
        args: list[Any] = [_ENCODE.encode(record), record.id, record.created_us, record.bytes,
                           self.quota_bytes if quota else 0, self.key_quota_bytes if quota else 0]
        status, used = await self._add(keys=self._keys(record), args=args)
        if status == -1:  # new content: send it (only now, so an identical upload never travels twice)
            status, used = await self._add(keys=self._keys(record), args=[*args, data])
        if status == -3:
            raise over_quota("this API key's file storage", int(used), record.bytes, self.key_quota_bytes)
        if status == -2:
            raise over_quota("the gateway's file storage", int(used), record.bytes, self.quota_bytes)

    async def get(self, file_id: str) -> FileRecord | None:
        raw = await self.redis.get(f"{self.prefix}meta:{file_id}")
        return None if raw is None else _DECODE.decode(raw)

    async def records(self, owner: str) -> list[FileRecord]:
        ids = await self.redis.zrange(f"{self.prefix}owner:{owner}", 0, -1)
        if not ids:
            return []
        names = [f"{self.prefix}meta:{i.decode() if isinstance(i, bytes) else i}" for i in ids]
        found = [_DECODE.decode(raw) for raw in await self.redis.mget(names) if raw is not None]
        return sorted(found, key=lambda r: r.order)

    async def content(self, sha256: str) -> bytes | None:
        return await self.redis.get(f"{self.prefix}blob:{sha256}")

    async def remove(self, record: FileRecord) -> bool:
        return bool(await self._remove(keys=self._keys(record), args=[record.id, record.bytes]))

    async def used_bytes(self) -> int:
        return int(await self.redis.get(f"{self.prefix}used") or 0)

    async def close(self) -> None:
        """The client is the app's: nothing to close here."""
