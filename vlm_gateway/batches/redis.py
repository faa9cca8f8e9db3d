"""``RedisBatches``: the batch store every replica shares (contract and layout: ``batches.store``).

Keys, all under ``prefix`` (its hash tag keeps them in one Redis Cluster slot)::

    b:{id}      hash   record (JSON), status, and the counters: completed failed skipped planned
                       enqueued input_tokens output_tokens cached_tokens
    r:{id}      hash   line index → its kind (c/f/s) and JSONL line, until the output files are written
    c:{id}      hash   line index → "job_id|runs": which job runs the line and how many runs it has had
    o:{owner}   zset   the owner's batch ids by creation time (µs)

Each call that reads and writes is one Lua script, so replicas running lines of the same batch count
each line once and agree on who finalizes. Every key expires ``ttl_s`` after the batch was created.
"""

from __future__ import annotations

import math
from typing import Any

from vlm_gateway.batches.store import DECODE, ENCODE, BatchRecord, Counts, LineKind

_COUNTERS = ("completed", "failed", "skipped", "planned", "enqueued", "input_tokens", "output_tokens", "cached_tokens")
_KIND = {"completed": "c", "failed": "f", "skipped": "s"}
_KIND_OF = {v: k for k, v in _KIND.items()}

_PRELUDE = """
local closed = {finalizing=true, failed=true, completed=true, expired=true, cancelled=true}  -- (store.CLOSED)
local function follow(key)  -- give a side key the batch's remaining lifetime
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
end
local counters = {'completed', 'failed', 'skipped', 'planned', 'enqueued', 'input_tokens', 'output_tokens',
                  'cached_tokens'}
"""

# KEYS: b, o. ARGV: record, status, planned, id, created µs, ttl ms.
_CREATE = """
redis.call('HSET', KEYS[1], 'record', ARGV[1], 'status', ARGV[2], 'completed', 0, 'failed', 0, 'skipped', 0,
           'planned', ARGV[3], 'enqueued', 0, 'input_tokens', 0, 'output_tokens', 0,
           'cached_tokens', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return 1
"""

# KEYS: b. ARGV: record, new status, expected statuses... Returns 1 when stored.
_TRANSITION = """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return 0 end
for i = 3, #ARGV do
  if s == ARGV[i] then
    redis.call('HSET', KEYS[1], 'record', ARGV[1], 'status', ARGV[2])
    return 1
  end
end
return 0
"""

# KEYS: b, r, c. ARGV: index, job id. Returns the run number, -2 (recorded or ended) or -1 (another job's).
_BEGIN = _PRELUDE + """
local s = redis.call('HGET', KEYS[1], 'status')
if not s or closed[s] or redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return -2 end
local runs = 0
local claim = redis.call('HGET', KEYS[3], ARGV[1])
if claim then
  local sep = string.find(claim, '|', 1, true)
  if string.sub(claim, 1, sep - 1) ~= ARGV[2] then return -1 end
  runs = tonumber(string.sub(claim, sep + 1))
end
runs = runs + 1
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2] .. '|' .. runs)
follow(KEYS[3])
return runs
"""

# KEYS: b, r. ARGV: index, kind field, kind char .. line, input tokens, output tokens.
# Returns {1 if counted now else 0, counters...}.
_RECORD = _PRELUDE + """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return {0} end
local new = 0
if not closed[s] and redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[3]) == 1 then
  redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
  redis.call('HINCRBY', KEYS[1], 'input_tokens', ARGV[4])
  redis.call('HINCRBY', KEYS[1], 'output_tokens', ARGV[5])
  redis.call('HINCRBY', KEYS[1], 'cached_tokens', ARGV[6])
  follow(KEYS[2])
  new = 1
end
local out = redis.call('HMGET', KEYS[1], unpack(counters))
table.insert(out, 1, new)
return out
"""

# KEYS: b. ARGV: counter, value. Returns the counters afterwards (none when the batch is gone).
_SET = _PRELUDE + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return redis.call('HMGET', KEYS[1], unpack(counters))
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _counts(values: list[Any]) -> Counts:
    return Counts(**{name: int(v or 0) for name, v in zip(_COUNTERS, values, strict=False)}) if values else Counts()


class RedisBatches:
    """Batches on the app's Redis client (bytes or ``decode_responses``, either works)."""

    def __init__(self, redis: Any, prefix: str, ttl_s: float) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_ms = max(1, math.ceil(ttl_s * 1000))
        self._create = redis.register_script(_CREATE)
        self._transition = redis.register_script(_TRANSITION)
        self._begin = redis.register_script(_BEGIN)
        self._record_line = redis.register_script(_RECORD)
        self._set = redis.register_script(_SET)

    def _b(self, batch_id: str) -> str:
        return f"{self.prefix}b:{batch_id}"

    def _r(self, batch_id: str) -> str:
        return f"{self.prefix}r:{batch_id}"

    def _c(self, batch_id: str) -> str:
        return f"{self.prefix}c:{batch_id}"

    def _o(self, owner: str) -> str:
        return f"{self.prefix}o:{owner}"

    async def create(self, record: BatchRecord) -> None:
        await self._create(keys=[self._b(record.id), self._o(record.owner)],
                           args=[ENCODE.encode(record), record.status, record.batch.request_counts.total, record.id,
                                 record.created_us, self.ttl_ms])

    @staticmethod
    def _decode(fields: dict[Any, Any]) -> BatchRecord | None:
        values = {_text(k): v for k, v in fields.items()}
        if "record" not in values:
            return None
        record = DECODE.decode(_bytes(values["record"]))
        record.counts = _counts([values.get(name) for name in _COUNTERS])
        return record

    async def get(self, batch_id: str) -> BatchRecord | None:
        return self._decode(await self.redis.hgetall(self._b(batch_id)))

    async def page(self, owner: str, after: str | None, limit: int) -> tuple[list[BatchRecord], bool] | None:
        ids = [_text(i) for i in await self.redis.zrevrange(self._o(owner), 0, -1)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for batch_id in ids:
                pipe.exists(self._b(batch_id))
            alive = await pipe.execute()
        gone = [i for i, a in zip(ids, alive, strict=True) if not a]
        if gone:
            await self.redis.zrem(self._o(owner), *gone)
        ids = [i for i, a in zip(ids, alive, strict=True) if a]
        if after is not None:
            if after not in ids:
                return None
            ids = ids[ids.index(after) + 1:]
        async with self.redis.pipeline(transaction=False) as pipe:
            for batch_id in ids[:limit]:
                pipe.hgetall(self._b(batch_id))
            found = [self._decode(fields) for fields in await pipe.execute()]
        return [r for r in found if r is not None], len(ids) > limit

    async def transition(self, record: BatchRecord, expected: tuple[str, ...]) -> bool:
        return bool(await self._transition(keys=[self._b(record.id)],
                                           args=[ENCODE.encode(record), record.status, *expected]))

    async def begin_line(self, batch_id: str, index: int, job_id: str) -> int:
        return int(await self._begin(keys=[self._b(batch_id), self._r(batch_id), self._c(batch_id)],
                                     args=[index, job_id]))

    async def record_line(self, batch_id: str, index: int, kind: LineKind, entry: bytes, input_tokens: int = 0,
                          output_tokens: int = 0, cached_tokens: int = 0) -> tuple[bool, Counts]:
        new, *values = await self._record_line(keys=[self._b(batch_id), self._r(batch_id)],
                                               args=[index, kind, _KIND[kind].encode() + entry, input_tokens,
                                                     output_tokens, cached_tokens])
        return bool(int(new)), _counts(values)

    async def set_planned(self, batch_id: str, planned: int) -> Counts:
        return _counts(await self._set(keys=[self._b(batch_id)], args=["planned", planned]))

    async def set_enqueued(self, batch_id: str, enqueued: int) -> None:
        await self._set(keys=[self._b(batch_id)], args=["enqueued", enqueued])

    async def results(self, batch_id: str) -> dict[int, tuple[LineKind, bytes]]:
        out: dict[int, tuple[LineKind, bytes]] = {}
        async for index, value in self.redis.hscan_iter(self._r(batch_id), count=1000):
            raw = _bytes(value)
            out[int(index)] = (_KIND_OF[raw[:1].decode()], raw[1:])  # type: ignore[index]
        return out

    async def drop_results(self, batch_id: str) -> None:
        await self.redis.delete(self._r(batch_id), self._c(batch_id))

    async def close(self) -> None:
        """The client is the app's: nothing to close here."""
