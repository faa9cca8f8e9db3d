"""Fixtures for the Responses API tests: the real app (tokenizer, templates, image loader, job queue,
state backend) with a scripted engine in place of vLLM, two API keys, and the app served by uvicorn for
the OpenAI SDK and LangChain."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from litestar.testing import TestClient

from tests.helpers import ALICE, TEST_KEYS, auth, serve_app
from vlm_gateway.app import create_app
from vlm_gateway.engines import Candidate, EngineDelta, EngineRequest, TokenLogprob
from vlm_gateway.engines.errors import EngineError
from vlm_gateway.files import FileSettings
from vlm_gateway.jobs.settings import JobSettings
from vlm_gateway.limits import LimitSettings
from vlm_gateway.responses_api.settings import ResponsesSettings
from vlm_gateway.settings import ModelSettings, Settings


class ScriptedEngine:
    """Answers every request with ``pieces`` (the last one with ``finish``) and a usage delta, and records
    what it was sent. ``fail`` is raised after ``fail_after`` pieces; while ``gate`` is clear the answer
    waits (a running background response); ``aborted`` counts streams closed before their end."""

    def __init__(self) -> None:
        self.ready = True
        self.max_model_len: int | None = None
        self.pieces = ["Hi", " there"]
        self.finish = "stop"
        self.fail: EngineError | None = None
        self.fail_after = 0
        self.gate = threading.Event()
        self.gate.set()
        self.requests: list[EngineRequest] = []
        self.aborted = 0
        self.cached = 0  # the prompt tokens the (pretended) prefix cache held, as vLLM reports them

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def recheck(self) -> bool:
        return self.ready

    @property
    def local_ready(self) -> bool:  # (as if it ran in the gateway)
        return self.ready

    async def generate(self, request: EngineRequest):
        self.requests.append(request)
        finished = False
        try:
            while not self.gate.is_set():
                await asyncio.sleep(0.01)
            top = request.sampling.logprobs
            for k, piece in enumerate(self.pieces):
                if self.fail is not None and k == self.fail_after:
                    raise self.fail
                lp = None if top is None else [TokenLogprob(piece, -0.5, None, [Candidate(piece, -0.5),
                                                                                Candidate("x", -1.5)][:top + 1])]
                yield EngineDelta(0, piece, prompt_token_ids=list(request.token_ids) if k == 0 else None,
                                  finish_reason=self.finish if k == len(self.pieces) - 1 else None, logprobs=lp)
            yield EngineDelta(prompt_tokens=len(request.token_ids) + 99 * len(request.images),
                              completion_tokens=len(self.pieces), cached_tokens=self.cached or None)
            finished = True
        finally:
            if not finished and self.fail is None:
                self.aborted += 1

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


def settings(checkpoint, **over) -> Settings:
    base = dict(models=[ModelSettings(id="m", checkpoint=str(checkpoint), aliases=["alias"])],
                limits=LimitSettings(keys=TEST_KEYS), jobs=JobSettings(concurrency=1, poll_s=0.05),
                responses=ResponsesSettings(cancel_poll_s=0.02, stream_poll_s=0.02))
    return Settings(**{**base, **over})


def app_for(s: Settings, engine: ScriptedEngine):
    return create_app(s, engine_factory=lambda model, session: engine)


@pytest.fixture(scope="module")
def engine() -> ScriptedEngine:
    return ScriptedEngine()


@pytest.fixture(scope="module")
def client(tiny_checkpoint, engine, tmp_path_factory) -> Iterator[TestClient]:
    files = FileSettings(dir=str(tmp_path_factory.mktemp("files")))
    with TestClient(app_for(settings(tiny_checkpoint, files=files), engine)) as c:
        c.headers.update(auth(ALICE))
        yield c


@pytest.fixture(autouse=True)
def fresh_engine(engine) -> Iterator[None]:
    engine.reset()
    yield
    engine.gate.set()


def serve(s: Settings, engine: ScriptedEngine):
    """The app on uvicorn in a thread; yields its /v1 base URL."""
    return serve_app(app_for(s, engine), start_timeout_s=60)


@pytest.fixture(scope="module")
def base_url(tiny_checkpoint, engine, tmp_path_factory) -> Iterator[str]:
    files = FileSettings(dir=str(tmp_path_factory.mktemp("files")))
    with serve(settings(tiny_checkpoint, files=files), engine) as url:
        yield url


def wait_for(check, timeout_s: float = 10.0, step_s: float = 0.02):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"condition not met within {timeout_s} s"
        time.sleep(step_s)
