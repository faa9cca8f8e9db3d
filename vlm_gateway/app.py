"""create_app(settings): routes, error handling and the lifespan that owns every external resource.

Wiring only. The aiohttp session, the Redis client, the tokenizers and the engines are created once
here and handed down through ``Services``; nothing else opens its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import aiohttp
from litestar import Litestar
from litestar.config.cors import CORSConfig

from vlm_gateway.api.access import request_ids
from vlm_gateway.api.auth import require_api_key
from vlm_gateway.api.batches import BATCH_ROUTES
from vlm_gateway.api.chat import chat_completions
from vlm_gateway.api.completions import completions
from vlm_gateway.api.docs import openapi_config
from vlm_gateway.api.files import file_routes
from vlm_gateway.api.health import health, ready
from vlm_gateway.api.metrics import http_metrics, metrics_endpoint
from vlm_gateway.api.models import list_models, retrieve_model
from vlm_gateway.api.queue import QUEUE_ROUTES
from vlm_gateway.api.render import render_chat_completion
from vlm_gateway.api.responses import RESPONSES_ROUTES
from vlm_gateway.api.seeds import fal_run, vision, vlmrun_generate, vlmrun_status
from vlm_gateway.batches import BatchService, build_batch_store, with_batches
from vlm_gateway.engines import Engine
from vlm_gateway.errors import error_response
from vlm_gateway.files.store import build_file_store
from vlm_gateway.images.features import Preprocessor, load_preprocessor
from vlm_gateway.images.load import ImageLoader
from vlm_gateway.jobs import build_jobs
from vlm_gateway.jobs.runner import classify, make_runner
from vlm_gateway.limits import KeyStore, Limiter
from vlm_gateway.logs import level
from vlm_gateway.looplag import LoopLag
from vlm_gateway.models import Model, ModelRegistry
from vlm_gateway.pipeline import Services
from vlm_gateway.playground import playground_routes
from vlm_gateway.responses_api.background import with_responses
from vlm_gateway.responses_api.store import ResponseStore
from vlm_gateway.sampling import load_defaults
from vlm_gateway.settings import EngineSettings, Settings
from vlm_gateway.state import redis_client, state_backend
from vlm_gateway.tokenize import Tokenizer

if TYPE_CHECKING:
    from vlm_gateway.engines.vllm_embedded import EmbeddedVLLM

log = logging.getLogger("vlm_gateway")

EngineFactory = Callable[[Model, aiohttp.ClientSession], Engine]

# Idle connections are dropped after this, before servers drop them (uvicorn and vLLM: 5 s), so a request is
# rarely sent on a connection the server is closing (``vlm_gateway.engines._wire.post`` retries that case).
ENGINE_KEEPALIVE_S = 4.0


def embedded_engine(model: Model, group: EngineSettings) -> EmbeddedVLLM:
    """The supervised vLLM server of a model's ``embedded`` engine group (not started)."""
    from vlm_gateway.engines.vllm_embedded import EmbeddedVLLM

    args = ["--limit-mm-per-prompt", json.dumps({"image": model.max_images}), *model.family.engine_args, *group.args]
    if model.context_length is not None:  # else vLLM's default: the checkpoint's own context length
        args = ["--max-model-len", str(model.context_length), *args]
    return EmbeddedVLLM(model.checkpoint, served_name=model.id, args=args, env=group.env, port=group.port)


def engine_pool(model: Model, session: aiohttp.ClientSession, redis=None, redis_prefix: str = "vlm:") -> Engine:
    """The model's pool (``vlm_gateway.engines.pool``): each ``engine``/``engines`` entry's servers —
    a supervised vLLM on this machine (embedded), stock vLLM servers spoken to in token ids (remote), or
    OpenAI-compatible servers that render the prompt themselves (openai). With Redis, every replica routes
    by one owner table."""
    from vlm_gateway.engines.openai_passthrough import OpenAIServer
    from vlm_gateway.engines.pool import EnginePool
    from vlm_gateway.engines.vllm_remote import VLLMServer
    from vlm_gateway.routing.owners import MemoryOwners, RedisOwners

    servers: list = []
    processes: list[EmbeddedVLLM] = []
    local: list[str] = []  # servers of this replica's own, started by its workers' supervisor
    for group in model.engines:
        image_cache = group.engine_image_cache and model.family.engine_keeps_images
        if group.kind == "embedded":
            process = embedded_engine(model, group)
            processes.append(process)
            servers.append(VLLMServer(process.url, session, image_cache=image_cache))
        elif group.kind == "remote":
            servers += [VLLMServer(url, session, image_cache=image_cache) for url in group.urls]
            local += group.urls if group.started_here else []
        else:
            key = os.environ.get(group.api_key_env) if group.api_key_env else None
            servers += [OpenAIServer(url, session, model=group.model or model.id, api_key=key) for url in group.urls]
    owners = RedisOwners(redis, f"{redis_prefix}route:{model.id}:") if redis is not None else MemoryOwners()
    pool = EnginePool(model.id, servers, routing=model.engine.routing, owners=owners,
                      request_timeout_s=model.engine.request_timeout_s, slow_start_s=model.engine.slow_start_s,
                      supervised=processes, local=local)
    for process in processes:
        process.ready = functools.partial(pool.server_up, process.url)
    return pool


def preprocessor(model: Model) -> Preprocessor | None:
    """How the gateway makes the model's image input, where its family and engine settings let it."""
    if not model.family.image_processor or model.engine.preprocess != "gateway":
        return None
    return load_preprocessor(model.family.image_processor, model.checkpoint, model.engine.preprocess_max_bytes)


# what a browser page may read of an answer besides the CORS-safelisted headers: the request id and the rate
# limit state the OpenAI SDK reads (``limits.rate``)
EXPOSED_HEADERS = ["X-Request-Id", "Retry-After", "retry-after-ms", *(
    f"x-ratelimit-{what}-{kind}" for kind in ("requests", "tokens") for what in ("limit", "remaining", "reset"))]


def cors_config(origins: list[str]) -> CORSConfig | None:
    """Browser pages of ``origins`` may call the API (preflight answered before authentication: a
    browser sends no API key with it). Keys travel in the Authorization header, never cookies."""
    if not origins:
        return None
    return CORSConfig(allow_origins=origins, allow_methods=["*"], allow_headers=["*"], allow_credentials=False,
                      expose_headers=EXPOSED_HEADERS, max_age=600)


def create_app(settings: Settings, engine_factory: EngineFactory | None = None) -> Litestar:
    registry = ModelRegistry(settings)
    logging.getLogger("vlm_gateway").setLevel(level(settings.log_level))  # the process's format: vlm_gateway.logs

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=ENGINE_KEEPALIVE_S)
        # no cookies: a cookie set by one image host must not travel with later fetches
        async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as session:
            redis = None
            if settings.redis_url:
                redis = redis_client(settings.redis_url)
            lag = LoopLag()
            lag.start()
            app.state.lag = lag
            state = state_backend(redis, settings.limits.redis_prefix, settings.redis_url or None)
            limiter = Limiter(settings.limits, state, KeyStore(state if redis else None, settings.limits.keys),
                              lag_ms=lag.ms)
            await limiter.refresh()
            tokenizers = {m.id: Tokenizer(m.tokenizer) for m in registry.models}
            await asyncio.gather(*(asyncio.to_thread(t.load) for t in tokenizers.values()))
            preprocessors = {m.id: await asyncio.to_thread(preprocessor, m) for m in registry.models}
            defaults = {m.id: await asyncio.to_thread(load_defaults, m.checkpoint)
                        for m in registry.models if m.generation_config}
            factory = engine_factory or functools.partial(engine_pool, redis=redis,
                                                          redis_prefix=settings.limits.redis_prefix)
            engines = {m.id: factory(m, session) for m in registry.models}
            for engine in engines.values():
                await engine.start()
            images = ImageLoader(settings.images, session, redis=redis)
            app.state.files = build_file_store(settings, redis)
            app.state.services = Services(
                settings=settings,
                models=registry,
                engines=engines,
                tokenizers=tokenizers,
                preprocessors=preprocessors,
                sampling_defaults=defaults,
                images=images,
                limiter=limiter,
                files=app.state.files,
            )
            app.state.responses = ResponseStore(state, settings.responses)
            runner = with_responses(make_runner(lambda: app.state.services), lambda: app.state.services,
                                    app.state.responses)
            app.state.batches = BatchService(build_batch_store(settings.batches, redis), settings.batches,
                                             app.state.files, lambda: app.state.services, lambda: app.state.jobs,
                                             lambda: app.state.responses)
            runner = with_batches(runner, app.state.batches)
            jobs = build_jobs(settings.jobs, session, runner, redis=redis, classify=classify)
            await jobs.start()
            app.state.jobs = jobs
            try:
                yield
            finally:
                await jobs.stop()
                await limiter.close()
                await lag.stop()
                await images.close()
                await app.state.files.close()
                await asyncio.gather(*(engine.close() for engine in engines.values()),
                                     return_exceptions=True)
                if redis is not None:
                    await redis.aclose()

    app = Litestar(
        route_handlers=[chat_completions, completions, list_models, retrieve_model, health, ready, vision, fal_run,
                        vlmrun_generate, vlmrun_status, *QUEUE_ROUTES, *file_routes(settings), *RESPONSES_ROUTES,
                        *BATCH_ROUTES, render_chat_completion, metrics_endpoint, *playground_routes(settings)],
        middleware=[http_metrics, require_api_key],  # outermost first
        lifespan=[lifespan],
        exception_handlers={Exception: error_response},
        cors_config=cors_config(settings.cors_origins),
        openapi_config=openapi_config(),  # /schema: Swagger UI from local files (works offline)
        request_max_body_size=settings.max_request_bytes,
        debug=False,
        logging_config=None,  # Litestar's default reconfigures the root logger (vlm_gateway.logs configures it)
    )
    # outermost, around Litestar's own handler (routing, CORS, the app's error handler): every answer gets
    # its request id and access log line, an unmatched path's or a preflight's too
    app.asgi_handler = request_ids(app.asgi_handler)
    return app
