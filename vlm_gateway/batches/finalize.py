"""Ending a batch: write its output and error files into the file store, then set its final status.

``finalize(service, batch_id)`` is called by whichever line's job finds every planned line recorded
(and by ``cancel`` and ``retrieve`` when nothing else will). It may run twice at once (a job redelivered
after its replica died, a read after the completion window): both write files, the final
compare-and-set picks one, and the other deletes what it wrote.

* ``in_progress`` → ``finalizing`` → ``completed``, or ``expired`` when some lines never ran;
* ``cancelling`` → ``cancelled``, the lines that finished in the files as usual;
* ``failed`` when the files cannot be stored: the error says why.

The files are stored even where they take a key (or the store) past its file quota: the lines ran and
were paid for, and their results are not thrown away; the key's next uploads wait for room.

The output file (purpose ``batch_output``) holds the lines that succeeded, the error file the lines
that failed or never ran, each in input order. A file with no lines is not written (its id stays null).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

from vlm_gateway.batches.lines import error_line
from vlm_gateway.batches.service import BatchService
from vlm_gateway.batches.store import TERMINAL, BatchRecord
from vlm_gateway.errors import GatewayError
from vlm_gateway.files.types import FileRecord, new_file_id
from vlm_gateway.schemas.batches import BatchError, BatchErrors

log = logging.getLogger("vlm_gateway.batches")
OUTPUT_PURPOSE = "batch_output"
JSONL = "application/jsonl"


async def _claim(service: BatchService, batch_id: str) -> BatchRecord | None:
    """The batch in ``finalizing`` or ``cancelling`` (moved there if needed); None when it has ended."""
    while True:
        record = await service.store.get(batch_id)
        if record is None or record.status in TERMINAL:
            return None
        if record.status in ("finalizing", "cancelling"):
            return record
        if await service.move(record, "finalizing", finalizing_at=int(time.time())):
            return await service.store.get(batch_id)


async def _missing(service: BatchService, record: BatchRecord, recorded: set[int]) -> list[bytes]:
    """Error lines for the requests that were never recorded (kept off the queue by a cancellation, or
    not reached in time); their custom ids come from the input file, when it still exists."""
    if len(recorded) >= record.batch.request_counts.total:
        return []
    lines = await service.input_lines(record)
    if lines is None:
        return []
    code, message = (("batch_cancelled", "the batch was cancelled before this request ran")
                     if record.status == "cancelling"
                     else ("batch_expired", "the batch's completion window ended before this request ran"))
    return [error_line(line.custom_id, code, message) for line in lines if line.index not in recorded]


async def _store_file(service: BatchService, owner: str, name: str, lines: list[bytes]) -> str | None:
    if not lines:
        return None
    data = b"".join(line + b"\n" for line in lines)
    digest = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
    created = time.time_ns() // 1000
    record = FileRecord(id=new_file_id(created), owner=owner, sha256=digest, bytes=len(data),
                        created_us=created, filename=name, purpose=OUTPUT_PURPOSE,
                        content_type=JSONL)
    await service.files.backend.add(record, data, quota=False)  # the work is done: its results are kept
    return record.id


async def _remove_files(service: BatchService, file_ids: list[str | None]) -> None:
    for file_id in file_ids:
        record = await service.files.backend.get(file_id) if file_id else None
        if record is not None:
            await service.files.backend.remove(record)


async def finalize(service: BatchService, batch_id: str) -> None:
    record = await _claim(service, batch_id)
    if record is None:
        return
    results = await service.store.results(batch_id)
    output = [entry for _, (kind, entry) in sorted(results.items()) if kind == "completed"]
    errors = [entry for _, (kind, entry) in sorted(results.items()) if kind != "completed"]
    missing = await _missing(service, record, set(results))
    errors += missing
    never_ran = (len(results) < record.batch.request_counts.total  # (counted, not read off the input: it may be gone)
                 or any(kind == "skipped" for kind, _ in results.values()))
    now = int(time.time())
    if record.status == "cancelling":
        status, stamp = "cancelled", {"cancelled_at": now}
    elif never_ran:
        status, stamp = "expired", {"expired_at": now}
    else:
        status, stamp = "completed", {"completed_at": now}
    written: list[str | None] = []
    try:
        written.append(await _store_file(service, record.owner, f"{batch_id}_output.jsonl", output))
        written.append(await _store_file(service, record.owner, f"{batch_id}_error.jsonl", errors))
    except GatewayError as exc:
        log.warning("batch %s: its output could not be stored: %s", batch_id, exc.message)
        await _remove_files(service, written)
        failure = BatchErrors(data=[BatchError(code=exc.code or "output_not_stored",
                                               message=f"the batch's output could not be stored: {exc.message}")])
        if await service.move(record, "failed", failed_at=now, errors=failure):
            await service.store.drop_results(batch_id)
            await service.unpin(record)
        return
    output_id, error_id = written
    if await service.move(record, status, output_file_id=output_id, error_file_id=error_id, **stamp):
        await service.store.drop_results(batch_id)
        await service.unpin(record)
    else:  # another finalizer won: its files are the batch's
        await _remove_files(service, written)
