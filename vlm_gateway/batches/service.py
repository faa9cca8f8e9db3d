"""``BatchService``: what the ``/v1/batches`` routes call, and what the batch jobs share.

One per app (``app.state.batches``), built in the lifespan with the store (Redis or memory), the file
store, and getters for the pipeline's ``Services``, the job queue and the Responses store (they are
made after it). Every operation takes the ``Caller``: a batch belongs to the key that created it, and
to any other key it does not exist (404, as an unknown id).

Statuses and who moves them (each move is a compare-and-set on the stored status)::

    validating ──fan-out job──► in_progress ──last line──► finalizing ──► completed | expired | failed
        │                           │
        └──────── cancel ───────────┴──► cancelling ──last line──► cancelled

A batch still unfinished when its completion window has passed is finalized by the next read of it
(``retrieve``): lines that never ran go to the error file as ``batch_expired``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from vlm_gateway.batches.lines import PARAM, Line, parse_input
from vlm_gateway.batches.settings import BatchSettings
from vlm_gateway.batches.store import TERMINAL, BatchRecord, BatchStore
from vlm_gateway.errors import InvalidRequest, NotFound
from vlm_gateway.files.types import FileRecord, new_file_id
from vlm_gateway.limits.rate import Caller
from vlm_gateway.paging import check_page
from vlm_gateway.schemas.batches import (
    Batch,
    BatchCreate,
    BatchError,
    BatchErrors,
    BatchEvent,
    BatchEventData,
    BatchList,
    BatchRequestCounts,
)

if TYPE_CHECKING:
    from vlm_gateway.files.store import FileStore
    from vlm_gateway.jobs import JobServices
    from vlm_gateway.pipeline import Services
    from vlm_gateway.responses_api.store import ResponseStore

log = logging.getLogger("vlm_gateway.batches")

FAN_OUT = "batch"  # job kind: queue a batch's lines (body: the batch id)
LINE = "batch_line"  # job kind: run one line (body: the request; metadata: batch id, index, custom_id)
EVENT = "batch_event"  # job kind: a batch's end, sent to batches.webhook_url (id and body: the event)
MAX_LIST = 100
PIN_OWNER = "batch:"  # + the batch id: the owner of its input's pin (no key's id looks like it)
CANCELLABLE = ("validating", "in_progress")


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(16)


def not_found(batch_id: str) -> NotFound:
    return NotFound(f"No batch found with id '{batch_id[:64]}'.", param="batch_id")


def _overdue(record: BatchRecord) -> bool:
    """Past its completion window and not ended: a read ends it (the lines that never ran are
    ``batch_expired``). Not a cancelled batch: it ends as the lines it runs finish, so that they are in
    its output, as cancelling promises."""
    return record.status in ("validating", "in_progress", "finalizing") and time.time() >= (
        record.batch.expires_at or 0)


def _check_metadata(metadata: dict[str, str] | None) -> None:
    """OpenAI's rule: at most 16 pairs, keys up to 64 characters, values up to 512."""
    if metadata is None:
        return
    if len(metadata) > 16:
        raise InvalidRequest("metadata may hold at most 16 pairs", param="metadata", code="invalid_value")
    for key, value in metadata.items():
        if len(key) > 64 or len(value) > 512:
            raise InvalidRequest(f"metadata[{key[:64]!r}]: keys may have at most 64 characters and values 512",
                                 param="metadata", code="invalid_value")


class BatchService:
    def __init__(self, store: BatchStore, settings: BatchSettings, files: FileStore,
                 services: Callable[[], Services], jobs: Callable[[], JobServices],
                 responses: Callable[[], ResponseStore]) -> None:
        self.store = store
        self.settings = settings
        self.files = files
        self.services = services
        self.jobs = jobs
        self.responses = responses
        self._announcing: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        for task in list(self._announcing):
            task.cancel()
        await asyncio.gather(*self._announcing, return_exceptions=True)
        await self.store.close()

    # --- the routes -------------------------------------------------------------------------------

    async def create(self, caller: Caller, req: BatchCreate) -> Batch:
        """Check the input file line by line (400 naming the line), then store the batch ``validating``
        and queue its fan-out job. The batch counts as one request against the key's requests/min;
        each line is admitted (concurrency, tokens/min) when it runs."""
        _check_metadata(req.metadata)
        file, data, lines = await self._read_input(caller, req.input_file_id, req.endpoint)
        svc = self.services()
        self._check_models(svc, caller, lines)
        await svc.limiter.check_rate(caller)
        now = time.time()
        batch = Batch(id=new_batch_id(), endpoint=req.endpoint, input_file_id=req.input_file_id,
                      completion_window=req.completion_window, status="validating", created_at=int(now),
                      expires_at=int(now + self.settings.completion_window_s),
                      request_counts=BatchRequestCounts(total=len(lines)), metadata=req.metadata,
                      model=lines[0].model)
        pin = await self._pin(file, data, batch.id)
        record = BatchRecord(caller.key_id, time.time_ns() // 1000, batch, input_pin=pin)
        try:
            await self.store.create(record)
        except BaseException:
            await self.unpin(record)
            raise
        try:
            await self.jobs().queue.submit(FAN_OUT, lines[0].model, batch.id.encode(),
                                           metadata={"batch_id": batch.id}, caller=caller)
        except BaseException:
            await self.fail(batch.id, "queue_unavailable", "the batch could not be queued")
            raise
        return record.view()

    async def retrieve(self, caller: Caller, batch_id: str) -> Batch:
        record = await self.owned(caller, batch_id)
        if _overdue(record):
            record = await self._end_overdue(record)
        return record.view()

    async def _end_overdue(self, record: BatchRecord) -> BatchRecord:
        from vlm_gateway.batches.finalize import finalize

        await finalize(self, record.id)
        return await self.store.get(record.id) or record

    async def cancel(self, caller: Caller, batch_id: str) -> Batch:
        """``cancelling`` at once; ``cancelled`` when the lines already running have finished (no
        queued line starts any more). A batch that was not queued yet is cancelled here and now."""
        from vlm_gateway.batches.finalize import finalize

        while True:
            record = await self.owned(caller, batch_id)
            if record.status in ("cancelling", "cancelled"):
                return record.view()
            if record.status not in CANCELLABLE:
                raise InvalidRequest(f"Cannot cancel a batch with status '{record.status}'.", param="batch_id",
                                     code="invalid_state")
            if await self.move(record, "cancelling", cancelling_at=int(time.time())):
                break
        if record.status == "validating":  # no line was queued: none will ever be recorded
            await self.store.set_planned(batch_id, 0)
            await finalize(self, batch_id)
        return (await self.owned(caller, batch_id)).view()

    async def page(self, caller: Caller, after: str | None = None, limit: int = 20) -> BatchList:
        """``caller``'s batches, newest first, after the batch ``after``."""
        check_page(limit, MAX_LIST)
        page = await self.store.page(caller.key_id, after, limit)
        if page is None:
            raise NotFound(f"No batch found with id '{(after or '')[:64]}'.", param="after")
        records, more = page
        data = [(await self._end_overdue(r) if _overdue(r) else r).view() for r in records]
        return BatchList(data=data, has_more=more, first_id=data[0].id if data else None,
                         last_id=data[-1].id if data else None)

    # --- shared with the jobs ---------------------------------------------------------------------

    async def owned(self, caller: Caller, batch_id: str) -> BatchRecord:
        record = await self.store.get(batch_id)
        if record is None or record.owner != caller.key_id:
            raise not_found(batch_id)
        return record

    async def move(self, record: BatchRecord, status: str, **changes: Any) -> bool:
        """Set ``status`` (and the other Batch fields in ``changes``) if the batch is still as
        ``record`` saw it; False when another replica moved it first (read it again)."""
        moved = msgspec.structs.replace(record, batch=msgspec.structs.replace(record.batch, status=status, **changes))
        if not await self.store.transition(moved, (record.status,)):
            return False
        if status in TERMINAL:  # the one replica whose move ended the batch tells the webhook
            self._announce(record.batch.id, status)
        return True

    def _announce(self, batch_id: str, status: str) -> None:
        """``batch.completed`` (``failed``, ``expired``, ``cancelled``) to ``batches.webhook_url``, as
        OpenAI sends it. The event is a job of its own (``EVENT``, its id the event's): its webhook is
        signed, retried and persisted as every job's, so a replica that stops does not lose it."""
        if not self.settings.webhook_url:
            return
        event = BatchEvent(id=f"evt_{secrets.token_hex(16)}", created_at=int(time.time()),
                           type=f"batch.{status}", data=BatchEventData(id=batch_id))  # type: ignore[arg-type]
        task = asyncio.ensure_future(self._queue_event(event))
        self._announcing.add(task)
        task.add_done_callback(self._announcing.discard)

    async def _queue_event(self, event: BatchEvent) -> None:
        try:
            await self.jobs().queue.submit(EVENT, "batches", msgspec.json.encode(event),
                                           webhook=self.settings.webhook_url, job_id=event.id)
        except Exception as exc:  # (a refused URL, the queue unreachable): the event cannot be sent
            log.warning("%s for %s not sent: %s", event.type, event.data.id, exc)

    async def fail(self, batch_id: str, code: str, message: str, line: int | None = None) -> None:
        """End an unfinished batch as ``failed`` with one error."""
        errors = BatchErrors(data=[BatchError(code=code, message=message, param=PARAM, line=line)])
        while True:
            record = await self.store.get(batch_id)
            if record is None or record.status in TERMINAL:
                return
            if await self.move(record, "failed", failed_at=int(time.time()), errors=errors):
                await self.store.drop_results(batch_id)
                await self.unpin(record)
                return

    async def input_bytes(self, record: BatchRecord) -> bytes | None:
        """The batch's input as it was when the batch was made (its pin), whatever became of the file
        since; None if it is gone (a batch made before pins, whose file was deleted)."""
        file = await self.files.backend.get(record.input_pin) if record.input_pin else None
        if file is None:
            file = await self.files.backend.get(record.batch.input_file_id)
            if file is None or file.owner != record.owner:
                return None
        return await self.files.backend.content(file.sha256)

    async def unpin(self, record: BatchRecord) -> None:
        """Let go of the input (the batch has ended)."""
        pinned = await self.files.backend.get(record.input_pin) if record.input_pin else None
        if pinned is not None:
            await self.files.backend.remove(pinned)

    async def input_lines(self, record: BatchRecord) -> list[Line] | None:
        data = await self.input_bytes(record)
        if data is None:
            return None
        return await asyncio.to_thread(parse_input, data, record.batch.endpoint, self.settings.max_lines)

    # --- helpers ----------------------------------------------------------------------------------

    async def _read_input(self, caller: Caller, file_id: str, endpoint: str) -> tuple[FileRecord, bytes, list[Line]]:
        file = await self.files.record(caller, file_id, PARAM)
        if file.purpose != "batch":
            raise InvalidRequest(f"the input file must be uploaded with purpose 'batch' (this one has purpose "
                                 f"{file.purpose!r})", param=PARAM, code="invalid_value")
        content = await self.files.open(caller, file_id, PARAM)
        return file, content.data, await asyncio.to_thread(parse_input, content.data, endpoint, self.settings.max_lines)

    async def _pin(self, file: FileRecord, data: bytes, batch_id: str) -> str:
        """A second record of the input's content, owned by the batch (no key lists it, no quota counts
        it, its bytes are the file's own): the lines are read from it while the batch runs, so deleting
        the file then changes nothing. ``unpin`` removes it when the batch ends."""
        created = time.time_ns() // 1000
        pin = msgspec.structs.replace(file, id=new_file_id(created), owner=PIN_OWNER + batch_id, created_us=created)
        await self.files.backend.add(pin, data, quota=False)
        return pin.id

    @staticmethod
    def _check_models(svc: Services, caller: Caller, lines: list[Line]) -> None:
        """Every model the lines name exists and the key may use it (400 naming the first line that
        names one that does not)."""
        first: dict[str, int] = {}
        for line in lines:
            first.setdefault(line.model, line.number)
        for name, number in first.items():
            try:
                model = svc.models.resolve(name)
                svc.limiter.check_model(caller, (model.id, *model.aliases))
            except NotFound as exc:
                raise InvalidRequest(f"line {number} of the input file: {exc.message}", param=PARAM,
                                     code="model_not_found") from None
