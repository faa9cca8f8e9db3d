"""Settings of the async job queue (``[jobs]`` in the config file, ``VLM_GATEWAY_JOBS__*`` in the environment).

To be added to ``vlm_gateway.settings.Settings`` as::

    jobs: JobSettings = msgspec.field(default_factory=JobSettings)

e.g. ``VLM_GATEWAY_JOBS__CONCURRENCY=8`` or ``VLM_GATEWAY_JOBS__WEBHOOK__SECRET=...``.
"""

from __future__ import annotations

import base64

import msgspec


class WebhookSettings(msgspec.Struct, forbid_unknown_fields=True):
    """Webhook delivery. The last four fields are the SSRF guard's policy (``GuardPolicy``), as for images.

    Attempt ``n`` (1-based) that fails is retried after ``min(base_delay_s * 2**(n-1), max_delay_s)``;
    ``attempts`` counts the first try, so the default 8 is 1 try + 7 retries. An empty ``secret`` sends
    webhooks unsigned (a warning is logged at startup). Signatures are Standard Webhooks'
    (``webhook-signature``); ``legacy_signature`` adds the earlier ``X-Signature`` headers too.
    """

    secret: str = ""  # "whsec_<base64 key>" (Standard Webhooks), or any string used as the key itself
    legacy_signature: bool = False
    attempts: int = 8
    base_delay_s: float = 2.0
    max_delay_s: float = 300.0
    timeout_s: float = 10.0
    allow_loopback: bool = False
    allow_hosts: list[str] = []
    deny_hosts: list[str] = []
    max_redirects: int = 0  # a webhook POST is not re-sent to wherever a redirect points

    def __post_init__(self) -> None:
        if self.secret.startswith("whsec_"):
            try:
                key = base64.b64decode(self.secret[6:], validate=True)
            except ValueError:
                key = b""
            if not key:
                raise ValueError("jobs.webhook.secret: after `whsec_` must come the base64 of a key")


class JobSettings(msgspec.Struct, forbid_unknown_fields=True):
    """The queue (memory, or Redis when ``Settings.redis_url`` is set) and its workers.

    * ``concurrency``: jobs one replica (one worker process, with ``workers`` > 1) runs at a time.
    * ``visibility_timeout_s``: a job (or a pending webhook) whose worker stopped heartbeating for this
      long is taken over by another worker; ``heartbeat_s`` must be well below it.
    * ``max_attempts``: runs of one job (the first plus reclaims after crashes) before it is failed.
    * ``job_timeout_s``: wall-clock limit of one run (0: none).
    * ``result_ttl_s``: how long a finished job's status and result stay readable.
    * ``max_job_age_s``: safety expiry of jobs that never finish (lost queues, flushed streams).
    * ``consumer_gc_idle_s``: Redis consumers with nothing pending and idle this long are removed from
      the group (dead replicas); 0 keeps them.
    """

    concurrency: int = 4
    key_prefix: str = "vlm-gateway:{jobs}:"  # the hash tag keeps every key in one Redis Cluster slot
    result_ttl_s: float = 86400.0
    max_job_age_s: float = 7 * 86400.0
    visibility_timeout_s: float = 60.0
    heartbeat_s: float = 10.0
    reclaim_interval_s: float = 5.0
    poll_s: float = 1.0  # longest blocking read of the queue (bounds shutdown latency, not pick-up latency)
    max_attempts: int = 3
    job_timeout_s: float = 0.0
    consumer_gc_idle_s: float = 86400.0
    webhook: WebhookSettings = msgspec.field(default_factory=WebhookSettings)

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.max_attempts < 1 or self.webhook.attempts < 1:
            raise ValueError("jobs: concurrency, max_attempts and webhook.attempts must be at least 1")
        if not 0 < self.heartbeat_s * 2 <= self.visibility_timeout_s:
            raise ValueError("jobs: heartbeat_s must be positive and at most half of visibility_timeout_s")
        if min(self.reclaim_interval_s, self.poll_s, self.result_ttl_s, self.max_job_age_s) <= 0:
            raise ValueError("jobs: intervals and TTLs must be positive")
