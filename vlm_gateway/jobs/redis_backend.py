"""The Redis queue: a Stream with one consumer group shared by every replica's workers.

* submit: one script assigns the sequence number, writes the job hash and ``XADD`` s its id;
* take: ``XREADGROUP`` (blocking at most ``poll_s``); reclaim: ``XAUTOCLAIM`` of entries idle longer
  than ``visibility_timeout_s``; heartbeat: ``XCLAIM … JUSTID`` of the worker's entries (resets idle);
* begin / complete / cancel / webhook progress: one Lua script each (``redis_scripts``): the first
  completion flips the state to ``done``, later ones are refused, so a result is stored and webhooked once;
* ack: ``XACK`` + ``XDEL`` (the stream holds only unfinished work).

The client is the app's shared ``redis.asyncio.Redis`` (bytes or ``decode_responses`` both work).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from redis.exceptions import ResponseError

from vlm_gateway.jobs import redis_scripts as lua
from vlm_gateway.jobs.queue import BaseJobQueue, WebhookVetter, not_found, position
from vlm_gateway.jobs.settings import JobSettings
from vlm_gateway.jobs.types import (
    ENCODER,
    JOB_DECODER,
    CancelOutcome,
    Claim,
    Completed,
    Delivery,
    Job,
    JobView,
    Lease,
    cancelled,
)

log = logging.getLogger("vlm_gateway.jobs")
GROUP = "workers"
_VIEWED = ("state", "seq", "expires", "owner", "kind", "created")  # the job hash's fields every view reads


def _b(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisJobQueue(BaseJobQueue):
    """Jobs shared by all replicas through ``redis`` under ``settings.key_prefix``."""

    def __init__(self, redis: Any, settings: JobSettings, vet_webhook: WebhookVetter | None = None) -> None:
        super().__init__(vet_webhook)
        self.redis = redis
        self.settings = settings
        prefix = settings.key_prefix
        self.stream, self.seq_key, self.started_key = prefix + "stream", prefix + "seq", prefix + "started"
        self._job_prefix = prefix + "job:"
        self._scripts = {name: redis.register_script(getattr(lua, name)) for name in
                         ("SUBMIT", "BEGIN", "COMPLETE", "CANCEL", "WEBHOOK_ATTEMPT", "WEBHOOK_DONE")}
        self._cursor = "0-0"

    def _key(self, job_id: str) -> str:
        return self._job_prefix + job_id

    async def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return await self._scripts[name](keys=keys, args=args)

    async def start(self) -> None:
        """Create the stream and the consumer group (from the stream's start: nothing queued is skipped)."""
        try:
            await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # --- client side ------------------------------------------------------------------------------

    async def _enqueue(self, job: Job) -> None:
        await self._run("SUBMIT", [self._key(job.id), self.seq_key, self.stream],
                        [job.id, ENCODER.encode(job), job.webhook or "", _ms(self.settings.max_job_age_s),
                         job.caller.key_id, job.kind, repr(job.created)])

    async def _fields(self, job_id: str, owner: str | None, *names: str) -> tuple[dict[str, Any], int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(self._key(job_id), [*_VIEWED, *names])
            pipe.get(self.started_key)
            values, started = await pipe.execute()
        fields = dict(zip([*_VIEWED, *names], values, strict=True))
        state = fields["state"]
        if state is None or (_s(state) == "done" and int(fields["expires"] or 0) <= time.time() * 1000) or (
                owner is not None and _s(fields["owner"] or b"") != owner):
            raise not_found(job_id)
        fields["state"] = _s(state)
        return fields, int(started or 0)

    def _view(self, job_id: str, fields: dict[str, Any], started: int) -> JobView:
        view = JobView(job_id, fields["state"], kind=_s(fields["kind"] or b""), created=float(fields["created"] or 0))
        if view.state == "queued":
            view.position = position(int(fields["seq"] or 0), started)
        elif view.state == "done":
            error = fields.get("error")
            view.error = _s(error) or None if error is not None else None
        return view

    async def status(self, job_id: str, owner: str | None = None) -> JobView:
        return self._view(job_id, *await self._fields(job_id, owner, "error"))

    async def result(self, job_id: str, owner: str | None = None) -> JobView:
        fields, started = await self._fields(job_id, owner, "error", "ok", "code", "result")
        view = self._view(job_id, fields, started)
        if view.state == "done":
            view.result = Completed(_s(fields["ok"]) == "1", int(fields["code"]), _b(fields["result"]), view.error)
        return view

    async def cancel(self, job_id: str, owner: str | None = None) -> CancelOutcome:
        res = cancelled()
        ttl = self.settings.result_ttl_s
        done = await self._run("CANCEL", [self._key(job_id)],
                               [res.status_code, res.body, res.error, int((time.time() + ttl) * 1000), _ms(ttl),
                                "" if owner is None else owner, _ms(self.settings.max_job_age_s)])
        if done == -1:
            raise not_found(job_id)
        return {1: "cancelled", 2: "requested"}.get(int(done), "finished")  # type: ignore[return-value]

    # --- worker side ------------------------------------------------------------------------------

    @staticmethod
    def _leases(entries: Any) -> list[Lease]:
        return [Lease(_s(fields[b"id"] if b"id" in fields else fields["id"]), _s(entry))
                for entry, fields in entries or [] if fields]

    async def backlog(self) -> tuple[int, float]:
        """Jobs queued or running (the stream holds only unfinished work), and the age of the oldest: its
        stream entry id starts with the milliseconds it was added at."""
        depth = await self.redis.xlen(self.stream)
        first = await self.redis.xrange(self.stream, count=1) if depth else []
        if not first:
            return depth, 0.0
        added_ms = int(_s(first[0][0]).split("-")[0])
        return depth, max(time.time() - added_ms / 1000, 0.0)

    async def take(self, consumer: str, count: int, block_s: float) -> list[Lease]:
        try:
            reply = await self.redis.xreadgroup(GROUP, consumer, {self.stream: ">"}, count=count,
                                                block=_ms(block_s))
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("job stream or group missing (flushed?); recreating it")
            await self.start()
            return []
        if isinstance(reply, dict):  # RESP3
            reply = list(reply.items())
        return [lease for _, entries in reply or [] for lease in self._leases(entries)]

    async def reclaim(self, consumer: str, count: int) -> list[Lease]:
        try:
            reply = await self.redis.xautoclaim(self.stream, GROUP, consumer,
                                                _ms(self.settings.visibility_timeout_s), self._cursor, count=count)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            return []
        self._cursor = _s(reply[0])
        leases = self._leases(reply[1])
        if leases:
            log.warning("reclaimed %d job(s) from dead or stalled workers: %s", len(leases),
                        ", ".join(lease.job_id for lease in leases))
        return leases

    async def heartbeat(self, consumer: str, leases: list[Lease]) -> set[str]:
        if not leases:
            return set()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xclaim(self.stream, GROUP, consumer, 0, [lease.entry for lease in leases], justid=True)
            for lease in leases:
                pipe.hmget(self._key(lease.job_id), ["stop", "state"])
            _, *flags = await pipe.execute()
        return {lease.job_id for lease, (stop, state) in zip(leases, flags, strict=True)
                if stop is not None and _s(state or b"") == "running"}

    async def release(self, consumer: str, leases: list[Lease]) -> None:
        """Make ``leases`` reclaimable at once (a graceful stop of a worker that still holds them)."""
        if leases:
            await self.redis.xclaim(self.stream, GROUP, consumer, 0, [lease.entry for lease in leases],
                                    idle=_ms(self.settings.visibility_timeout_s), justid=True)

    async def begin(self, lease: Lease, consumer: str) -> Claim:
        reply = await self._run("BEGIN", [self._key(lease.job_id), self.started_key], [consumer])
        action = _s(reply[0])
        if action == "run":
            return Claim("run", job=JOB_DECODER.decode(_b(reply[2])), attempt=int(reply[1]),
                         stopped=_s(reply[3]) == "1")
        if action == "deliver":
            url, ok, code, result, error, attempts, next_at = reply[1:8]
            stored = Completed(_s(ok) == "1", int(code), _b(result), _s(error) or None)
            return Claim("deliver", delivery=Delivery(lease.job_id, _s(url), stored, int(attempts or 0),
                                                      float(next_at or 0)))
        return Claim("ack")

    async def complete(self, lease: Lease, result: Completed) -> tuple[bool, Delivery | None]:
        ttl = self.settings.result_ttl_s
        won = await self._run("COMPLETE", [self._key(lease.job_id)], [
            int(result.ok), result.status_code, result.body, result.error or "",
            int((time.time() + ttl) * 1000), _ms(ttl), _ms(self.settings.max_job_age_s), int(result == cancelled())])
        if won != 2:
            return won != 0, None
        url = await self.redis.hget(self._key(lease.job_id), "webhook")
        return True, Delivery(lease.job_id, _s(url), result)

    async def webhook_attempt(self, job_id: str, next_at: float) -> int:
        return int(await self._run("WEBHOOK_ATTEMPT", [self._key(job_id)], [repr(next_at)]))

    async def webhook_done(self, job_id: str, delivered: bool) -> None:
        await self._run("WEBHOOK_DONE", [self._key(job_id)], ["delivered" if delivered else "failed"])

    async def ack(self, lease: Lease) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, GROUP, lease.entry)
            pipe.xdel(self.stream, lease.entry)
            await pipe.execute()

    async def gc(self, consumer: str) -> None:
        """Remove consumers of dead replicas (nothing pending, idle ``consumer_gc_idle_s``)."""
        limit = self.settings.consumer_gc_idle_s * 1000
        if limit <= 0:
            return
        for info in await self.redis.xinfo_consumers(self.stream, GROUP):
            name = _s(info["name"])
            if name != consumer and int(info["pending"]) == 0 and int(info["idle"]) > limit:
                await self.redis.xgroup_delconsumer(self.stream, GROUP, name)
