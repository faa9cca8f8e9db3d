"""A scripted stand-in for a vLLM server started with ``--enable-scale-out`` (loopback only).

It speaks just enough of vLLM's protocol for the gateway's remote engine client: ``/health``,
``/v1/models`` (with ``max_model_len``) and ``POST /inference/v1/generate`` (SSE, ``output_mode``
text), and it counts the generate requests running at once — the ground truth a concurrency limit is
judged by. Runs in a thread of the test process: ``with FakeEngine(hold_s=0.5) as engine: engine.url``.
"""

from __future__ import annotations

import asyncio
import threading

import msgspec
from aiohttp import web


class FakeEngine:
    def __init__(self, hold_s: float = 0.2, text: str = "ok", max_model_len: int = 4096,
                 served_name: str = "fake", tokens: int = 1, token_gap_s: float = 0.0) -> None:
        self.hold_s = hold_s
        self.tokens = tokens  # streamed: one chunk per token, token_gap_s apart (as an engine's steps)
        self.token_gap_s = token_gap_s
        self.text = text
        self.max_model_len = max_model_len
        self.served_name = served_name
        self.running = 0
        self.max_running = 0
        self.served = 0
        self.url = ""
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="fake-engine")

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = msgspec.json.decode(await request.read())
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            ids = list(body["token_ids"])
            choice = {"index": 0, "text": self.text * self.tokens, "token_ids": [1] * self.tokens,
                      "finish_reason": "length"}
            usage = {"prompt_tokens": len(ids), "completion_tokens": self.tokens}
            if not body.get("stream", True):  # a whole answer, as vLLM gives one
                await asyncio.sleep(self.hold_s)
                return web.json_response({"choices": [choice], "prompt_token_ids": ids, "usage": usage})
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await asyncio.sleep(self.hold_s)
            step = {"index": 0, "text": self.text, "token_ids": [1], "finish_reason": None}
            steps = [step] * (self.tokens - 1) + [{**step, "finish_reason": "length"}]
            chunks = [{"choices": [one]} for one in steps]
            chunks[0]["prompt_token_ids"] = ids
            if body.get("stream_options", {}).get("include_usage", True):
                chunks.append({"choices": [], "usage": usage})
            try:
                for i, chunk in enumerate(chunks):
                    if i and self.token_gap_s and chunk["choices"]:
                        await asyncio.sleep(self.token_gap_s)
                    await response.write(b"data: " + msgspec.json.encode(chunk) + b"\n\n")
                await response.write(b"data: [DONE]\n\n")
            except ConnectionResetError:  # the gateway went away mid-answer (its client did)
                pass
            return response
        finally:
            with self._lock:
                self.running -= 1
                self.served += 1

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.served_name, "object": "model", "max_model_len": self.max_model_len}]})

    async def _abort(self, request: web.Request) -> web.Response:
        return web.json_response({})

    def _serve(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        app = web.Application()
        app.add_routes([web.post("/inference/v1/generate", self._generate), web.get("/health", self._health),
                        web.get("/v1/models", self._models), web.post("/inference/v1/abort_requests", self._abort)])
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> FakeEngine:
        self._thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
