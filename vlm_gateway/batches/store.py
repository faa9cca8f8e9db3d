"""Where batches are kept: a record per batch, live counters, and each line's result until the output
file is written. Two backends with one contract: ``MemoryBatches`` (one process) and ``RedisBatches``
(every replica; each call below is one atomic Lua script there).

Per batch:

* the record (``BatchRecord``: owner and the ``Batch`` object) with its ``status`` beside it, so that a
  change of status is a compare-and-set (``transition``): of two replicas that both try to move a
  batch on, one wins and the other reads it again;
* counters: lines ``completed`` / ``failed`` / ``skipped`` (never ran: cancelled or expired), the
  ``planned`` number of lines to wait for (the total, less the lines a cancellation kept off the
  queue), ``enqueued`` (how far the fan-out job got) and the tokens used;
* per line: its result (the JSONL line for the output or error file), written once (``record_line``
  counts a line the first time only, so a redelivered job never counts twice), and its claim (the job
  running it and how many runs it has had: ``begin_line``). Once the batch is ``finalizing`` no line is
  begun or recorded: the files are written from the lines recorded, and the counts must agree with them.

The line that makes ``completed + failed + skipped`` reach ``planned`` finalizes the batch.
Everything expires ``ttl_s`` after the batch was created.
"""

from __future__ import annotations

import time
from typing import Any, Literal, Protocol

import msgspec

from vlm_gateway.batches.settings import BatchSettings
from vlm_gateway.schemas.batches import Batch, BatchInputTokensDetails, BatchRequestCounts, BatchUsage

LineKind = Literal["completed", "failed", "skipped"]
TERMINAL = ("failed", "completed", "expired", "cancelled")
#: No line is begun or recorded any more: its output files are being written from the lines recorded.
CLOSED = ("finalizing", *TERMINAL)
#: ``begin_line`` results other than an attempt number.
ALREADY_RECORDED, CLAIMED_ELSEWHERE = -2, -1


class Counts(msgspec.Struct):
    completed: int = 0
    failed: int = 0
    skipped: int = 0
    planned: int = 0
    enqueued: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0  # of input_tokens, those the engines' prefix caches held

    @property
    def recorded(self) -> int:
        return self.completed + self.failed + self.skipped


class BatchRecord(msgspec.Struct):
    """A batch as stored. ``counts`` is filled in from the live counters by ``get`` (the copy in the
    stored JSON is never read); ``view()`` is the Batch object as the API shows it."""

    owner: str  # Caller.key_id
    created_us: int
    batch: Batch
    counts: Counts = msgspec.field(default_factory=Counts)
    input_pin: str | None = None  # the batch's own record of its input's content (BatchService._pin)

    @property
    def id(self) -> str:
        return self.batch.id

    @property
    def status(self) -> str:
        return self.batch.status

    def view(self) -> Batch:
        c = self.counts
        counts = BatchRequestCounts(total=self.batch.request_counts.total, completed=c.completed, failed=c.failed)
        usage = BatchUsage(input_tokens=c.input_tokens, output_tokens=c.output_tokens,
                           input_tokens_details=BatchInputTokensDetails(cached_tokens=c.cached_tokens),
                           total_tokens=c.input_tokens + c.output_tokens)
        return msgspec.structs.replace(self.batch, request_counts=counts, usage=usage)


ENCODE = msgspec.json.Encoder()
DECODE = msgspec.json.Decoder(BatchRecord)


class BatchStore(Protocol):
    """Batches, their counters and their lines' results (see the module docstring)."""

    async def create(self, record: BatchRecord) -> None:
        """Store a new batch; ``planned`` starts at its total."""
        ...

    async def get(self, batch_id: str) -> BatchRecord | None:
        """The batch with its live counts, whoever owns it; None when there is none (or it expired)."""
        ...

    async def page(self, owner: str, after: str | None, limit: int) -> tuple[list[BatchRecord], bool] | None:
        """``owner``'s batches newest first, after the batch ``after``; and whether more follow.
        None when ``after`` is not one of ``owner``'s batches."""
        ...

    async def transition(self, record: BatchRecord, expected: tuple[str, ...]) -> bool:
        """Store ``record`` (its new status) if the stored status is one of ``expected``."""
        ...

    async def begin_line(self, batch_id: str, index: int, job_id: str) -> int:
        """Claim a line for the job ``job_id``: its run number (1, 2, ... the same job redelivered
        after a crash counts up), ``ALREADY_RECORDED`` (also once the batch has ended), or
        ``CLAIMED_ELSEWHERE`` (another job has it)."""
        ...

    async def record_line(self, batch_id: str, index: int, kind: LineKind, entry: bytes, input_tokens: int = 0,
                          output_tokens: int = 0, cached_tokens: int = 0) -> tuple[bool, Counts]:
        """Keep a line's result and count it, the first time only and while the batch has not ended;
        (whether this call did, the counts)."""
        ...

    async def set_planned(self, batch_id: str, planned: int) -> Counts:
        """Wait for ``planned`` lines only (a cancellation kept the rest off the queue)."""
        ...

    async def set_enqueued(self, batch_id: str, enqueued: int) -> None: ...

    async def results(self, batch_id: str) -> dict[int, tuple[LineKind, bytes]]:
        """Every recorded line: index → (kind, JSONL line)."""
        ...

    async def drop_results(self, batch_id: str) -> None:
        """Forget the lines' results and claims (they are in the output files now)."""
        ...

    async def close(self) -> None: ...


class _Memory(msgspec.Struct):
    record: bytes
    status: str
    expires: float
    counts: Counts
    results: dict[int, tuple[LineKind, bytes]] = {}
    claims: dict[int, tuple[str, int]] = {}


class MemoryBatches:
    """This process's batches, in dicts. No method awaits in the middle, so each is atomic."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._batches: dict[str, _Memory] = {}
        self._owners: dict[str, list[str]] = {}  # owner → ids, oldest first

    def _live(self, batch_id: str) -> _Memory | None:
        held = self._batches.get(batch_id)
        if held is not None and held.expires <= time.time():
            del self._batches[batch_id]
            return None
        return held

    def _record(self, held: _Memory) -> BatchRecord:
        record = DECODE.decode(held.record)
        record.counts = msgspec.structs.replace(held.counts)
        return record

    async def create(self, record: BatchRecord) -> None:
        counts = Counts(planned=record.batch.request_counts.total)
        self._batches[record.id] = _Memory(ENCODE.encode(record), record.status, time.time() + self.ttl_s, counts)
        self._owners.setdefault(record.owner, []).append(record.id)

    async def get(self, batch_id: str) -> BatchRecord | None:
        held = self._live(batch_id)
        return None if held is None else self._record(held)

    async def page(self, owner: str, after: str | None, limit: int) -> tuple[list[BatchRecord], bool] | None:
        ids = self._owners.get(owner, [])
        ids[:] = [i for i in ids if self._live(i) is not None]
        newest = ids[::-1]
        if after is not None:
            if after not in newest:
                return None
            newest = newest[newest.index(after) + 1:]
        return [self._record(self._batches[i]) for i in newest[:limit]], len(newest) > limit

    async def transition(self, record: BatchRecord, expected: tuple[str, ...]) -> bool:
        held = self._live(record.id)
        if held is None or held.status not in expected:
            return False
        held.record, held.status = ENCODE.encode(record), record.status
        return True

    async def begin_line(self, batch_id: str, index: int, job_id: str) -> int:
        held = self._live(batch_id)
        if held is None or held.status in CLOSED or index in held.results:
            return ALREADY_RECORDED
        owner, runs = held.claims.get(index, (job_id, 0))
        if owner != job_id:
            return CLAIMED_ELSEWHERE
        held.claims[index] = (job_id, runs + 1)
        return runs + 1

    async def record_line(self, batch_id: str, index: int, kind: LineKind, entry: bytes, input_tokens: int = 0,
                          output_tokens: int = 0, cached_tokens: int = 0) -> tuple[bool, Counts]:
        held = self._live(batch_id)
        if held is None:
            return False, Counts()
        if held.status in CLOSED or index in held.results:
            return False, msgspec.structs.replace(held.counts)
        held.results[index] = (kind, bytes(entry))
        c = held.counts
        setattr(c, kind, getattr(c, kind) + 1)
        c.input_tokens += input_tokens
        c.output_tokens += output_tokens
        c.cached_tokens += cached_tokens
        return True, msgspec.structs.replace(c)

    async def set_planned(self, batch_id: str, planned: int) -> Counts:
        held = self._live(batch_id)
        if held is None:
            return Counts()
        held.counts.planned = planned
        return msgspec.structs.replace(held.counts)

    async def set_enqueued(self, batch_id: str, enqueued: int) -> None:
        held = self._live(batch_id)
        if held is not None:
            held.counts.enqueued = enqueued

    async def results(self, batch_id: str) -> dict[int, tuple[LineKind, bytes]]:
        held = self._live(batch_id)
        return {} if held is None else dict(held.results)

    async def drop_results(self, batch_id: str) -> None:
        held = self._live(batch_id)
        if held is not None:
            held.results, held.claims = {}, {}

    async def close(self) -> None:
        pass


def build_batch_store(settings: BatchSettings, redis: Any = None) -> BatchStore:
    """``RedisBatches`` when the app has a Redis client, else ``MemoryBatches``."""
    if redis is None:
        return MemoryBatches(settings.ttl_s)
    from vlm_gateway.batches.redis import RedisBatches

    return RedisBatches(redis, settings.key_prefix, settings.ttl_s)
