"""Settings of the Batch API (``[batches]`` in the config file, ``VLM_GATEWAY_BATCHES__*`` in the environment).

    [batches]
    max_lines = 50000           # requests in one input file (its size is bounded by files.max_bytes)
    completion_window_s = 86400 # "24h": lines not run by then are not run (status expired)
    ttl_s = 2592000             # how long a batch can be read after it was last written: 30 days
    enqueue_chunk = 100         # lines put on the job queue between two looks for a cancellation
    max_queued_lines = 200      # lines of one batch on the job queue at once (queued or running): a job
                                # queued after a batch waits for at most this many of its lines, and two
                                # batches take turns. Keep it a few times the worker slots of all replicas
                                # (replicas x jobs.concurrency); 0: every line is queued at once
    webhook_url = ""            # where batch.completed / failed / expired / cancelled events go (as OpenAI
                                # sends them; signed and retried with the [jobs.webhook] settings)

Batches live in Redis when ``redis_url`` is set (every replica sees them, and counts lines
atomically), else in this process's memory. Their output files go to the file store (``[files]``).
"""

from __future__ import annotations

import msgspec


class BatchSettings(msgspec.Struct, forbid_unknown_fields=True):
    max_lines: int = 50_000  # OpenAI's limit
    completion_window_s: float = 86400.0
    ttl_s: float = 30 * 86400.0
    enqueue_chunk: int = 100
    max_queued_lines: int = 200
    webhook_url: str = ""
    key_prefix: str = "vlm-gateway:{batches}:"  # Redis: the hash tag keeps every key in one Cluster slot

    def __post_init__(self) -> None:
        if self.max_lines < 1 or self.enqueue_chunk < 1:
            raise ValueError("batches.max_lines and batches.enqueue_chunk must be at least 1")
        if self.max_queued_lines < 0:
            raise ValueError("batches.max_queued_lines must be 0 (no window) or more")
        if self.completion_window_s <= 0 or self.ttl_s <= self.completion_window_s:
            raise ValueError("batches.completion_window_s must be positive and batches.ttl_s longer than it")
