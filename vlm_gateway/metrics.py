"""Prometheus metrics: defined once here, observed where each fact is known, served at ``GET /metrics``.

HTTP requests by route template, method and status (count, duration, 5xx, in progress) are observed by
the ``http_metrics`` middleware (``vlm_gateway/api/metrics.py``). The rest is observed where it happens:

- per model: requests by outcome, time in the gateway before the engine, time to first token, prompt /
  image / completion tokens, requests in the engine now, engine readiness;
- images: loader events (downloads, cache hits and misses by layer, failures…) and bytes downloaded;
- images sent to engines as the gateway-made model input: with their tensors, or by key;
- routing: affinity hits, new keys, spills over the load bound, failovers to another server; each
  pool server's health;
- 429s by key name and code (never the secret);
- jobs: queue depth and the oldest job's age (read when scraped), webhook deliveries by outcome;
- the event loop's lag.

Several worker processes: set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory shared by them
(prometheus-client's multiprocess mode); ``/metrics`` then sums every process's files. Gauges say how
they combine over the live processes (``livesum``: in-flight requests; ``livemostrecent``: values read when
scraped, so the answering worker's; ``livemax``: a server in rotation in any worker); a worker that died
(uvicorn replaces it) is forgotten at the next scrape.

This module imports nothing of the gateway: every layer may record into it.
"""

from __future__ import annotations

import contextvars
import os
import time
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

PREFIX = "vlm_gateway"
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_HTTP = ["method", "path", "status_code", "app_name"]  # path: the route's template
HTTP_REQUESTS = Counter(f"{PREFIX}_requests", "HTTP requests by route, method and status.", _HTTP)
HTTP_SECONDS = Histogram(f"{PREFIX}_request_duration_seconds", "HTTP requests' duration, to the end of the "
                         "response's body.", _HTTP, buckets=(*_LATENCY, 120.0, 300.0, 600.0))  # (long answers)
HTTP_ERRORS = Counter(f"{PREFIX}_requests_error", "HTTP requests answered with a 5xx status.", _HTTP)
HTTP_IN_PROGRESS = Gauge(f"{PREFIX}_requests_in_progress", "HTTP requests being answered now.",
                         ["method", "path", "app_name"], multiprocess_mode="livesum")
MODEL_REQUESTS = Counter(f"{PREFIX}_model_requests", "Requests that reached a model's pipeline, by outcome "
                         "(ok, or the error code).", ["model", "outcome"])
BEFORE_ENGINE = Histogram(f"{PREFIX}_before_engine_seconds", "Time from the request's arrival to its engine "
                          "call: admission, images, template, tokens.", ["model"], buckets=_LATENCY)
TIME_TO_FIRST_TOKEN = Histogram(f"{PREFIX}_time_to_first_token_seconds", "Time from the request's arrival to "
                                "the engine's first output (streamed requests).", ["model"], buckets=_LATENCY)
PROMPT_TOKENS = Counter(f"{PREFIX}_prompt_tokens", "Prompt tokens as the engine counted them (images "
                        "expanded).", ["model"])
IMAGE_TOKENS = Counter(f"{PREFIX}_image_tokens", "The prompt tokens images took.", ["model"])
COMPLETION_TOKENS = Counter(f"{PREFIX}_completion_tokens", "Generated tokens.", ["model"])
IMAGES = Counter(f"{PREFIX}_images", "Images in requests that reached the engine.", ["model"])
ENGINE_IN_FLIGHT = Gauge(f"{PREFIX}_engine_in_flight", "Requests in the model's engine now.", ["model"],
                         multiprocess_mode="livesum")
ENGINE_READY = Gauge(f"{PREFIX}_engine_ready", "1 when the model's engine takes requests (read when scraped).",
                     ["model"], multiprocess_mode="livemostrecent")
IMAGE_EVENTS = Counter(f"{PREFIX}_image_loader_events", "Image loader events: downloads, download_failures, "
                       "memory_hits/misses (fetched bytes by URL), redis_hits/misses, result_hits/misses (sized "
                       "images by content hash), data_uris, shared_fetches…", ["event"])
IMAGE_BYTES = Counter(f"{PREFIX}_image_download_bytes", "Bytes downloaded from image URLs.")
RATE_LIMITED = Counter(f"{PREFIX}_rate_limited", "Requests refused with 429, by key name and code.",
                       ["key", "code"])
JOBS_QUEUED = Gauge(f"{PREFIX}_jobs_unfinished", "Jobs queued or running (read when scraped).",
                    multiprocess_mode="livemostrecent")
JOBS_OLDEST = Gauge(f"{PREFIX}_jobs_oldest_age_seconds", "Age of the oldest unfinished job (read when "
                    "scraped).", multiprocess_mode="livemostrecent")
WEBHOOKS = Counter(f"{PREFIX}_webhook_deliveries", "Webhook delivery attempts by outcome (ok, retry, "
                   "give_up).", ["outcome"])
ENGINE_SERVER_UP = Gauge(f"{PREFIX}_engine_server_up", "1 while a server of the model's pool is in rotation "
                         "(health checks, failed requests).", ["model", "server"], multiprocess_mode="livemax")
ROUTING = Counter(f"{PREFIX}_routing_decisions", "Engine server choices: affinity (the server that holds the "
                  "key's caches), new (a key seen first: the pool's least-owning server), moved (its server "
                  "left the pool), spilled (its server was over the load bound), least_loaded (no key, or "
                  "that routing).", ["decision"])
FAILOVERS = Counter(f"{PREFIX}_engine_failovers", "Requests retried on another server of the pool before their "
                    "first token (the first refused the connection, answered 503 or died).")
ENGINE_IMAGE_INPUTS = Counter(f"{PREFIX}_engine_image_inputs", "Images sent to vLLM servers: data (the image, "
                              "or the model's input made by the gateway), key (the server holds it: sent by key "
                              "alone), resent (sent again after a miss: the server had dropped an image sent by "
                              "key; or vLLM's frontend had sent one by key to an engine without it, and all "
                              "went again).", ["server", "sent"])
LOOP_LAG = Gauge(f"{PREFIX}_event_loop_lag_seconds", "How late the event loop ran a timer (read when "
                 "scraped).", multiprocess_mode="livemostrecent")

#: The current HTTP request's arrival (``time.monotonic()``), set by the ``http_metrics`` middleware; the
#: pipeline reads it for the before-engine and first-token times. Unset (jobs): measured from the pipeline's start.
ARRIVED: contextvars.ContextVar[float] = contextvars.ContextVar("vlm_gateway_arrived")


def arrived() -> float:
    return ARRIVED.get(time.monotonic())


def _forget_dead(path: Path) -> None:
    """Drop the live gauges of worker processes that are gone (prometheus-client's ``mark_process_dead``,
    which a gunicorn hook would call; uvicorn has none). Counters and histograms keep what they counted."""
    for file in path.glob("gauge_live*_*.db"):
        pid = int(file.stem.rsplit("_", 1)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, str(path))
        except PermissionError:  # alive, another user's
            pass


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus' text format: this process's, or every worker's in multiprocess mode."""
    registry = REGISTRY
    if path := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        _forget_dead(Path(path))
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST
