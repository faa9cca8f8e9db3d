"""Fixtures for the image loader tests.

Network rule: these tests only ever talk to 127.0.0.1. ``connections`` (autouse) records every
``socket.connect`` and refuses, and fails the test on, any address that is not loopback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections import Counter

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from tests.gateway.images import imagedata as img
from vlm_gateway.images.load import ImageLoader
from vlm_gateway.settings import ImageSettings

HUGE = 6 * 1024 * 1024


class Connections(list):
    """Addresses passed to ``socket.connect`` during the test."""

    def non_loopback(self) -> list:
        out = []
        for address in self:
            host = address[0] if isinstance(address, tuple) else address
            try:
                if not ipaddress.ip_address(str(host).split("%")[0]).is_loopback:
                    out.append(address)
            except ValueError:
                out.append(address)
        return out


@pytest.fixture(autouse=True)
def connections(monkeypatch):
    seen = Connections()
    real = socket.socket.connect

    def connect(self, address):
        seen.append(address)
        if seen.non_loopback():
            raise OSError(101, f"test network rule: refusing to connect to {address!r}")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    yield seen
    assert not seen.non_loopback(), f"a test tried to connect off-host: {seen.non_loopback()}"


class FakeResolver:
    """An injectable resolver: ``answers[host]`` (a list, or a list of lists for successive calls)."""

    def __init__(self, answers: dict | None = None) -> None:
        self.answers = dict(answers or {})
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        n = sum(1 for h, _ in self.calls if h == host) - 1
        answer = self.answers.get(host)
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "not found")
        if answer and isinstance(answer[0], list):
            return answer[min(n, len(answer) - 1)]
        return answer


class FakeRedis:
    """The two calls the loader uses, in memory."""

    def __init__(self, fail: bool = False) -> None:
        self.data: dict[str, bytes] = {}
        self.ttls: dict[str, int] = {}
        self.fail = fail

    async def get(self, key):
        if self.fail:
            raise ConnectionError("redis down")
        return self.data.get(key)

    async def set(self, key, value, ex=None):
        if self.fail:
            raise ConnectionError("redis down")
        self.data[key] = bytes(value)
        self.ttls[key] = ex


class ImageServer:
    """The state of the local test server: hit counts, Host headers seen, bytes sent."""

    def __init__(self) -> None:
        self.hits: Counter = Counter()
        self.hosts: list[str] = []
        self.sent: dict[str, int] = {}
        self.port = 0
        self.raw_port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def raw_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.raw_port}{path}"


PNG = img.encode("PNG")
NOISE_PNG = img.noise("PNG")
FILES = {
    "ok.png": (PNG, "image/png"),
    "photo.jpg": (img.encode("JPEG", (800, 600)), "image/jpeg"),
    "liar.jpg": (PNG, "text/plain"),  # a PNG, with a .jpg name and a text type: the bytes win
    "page.png": (b"<!doctype html><html><body>not an image</body></html>", "image/png"),
    "truncated.png": (img.truncated("PNG"), "image/png"),
    "bomb.png": (img.png_bomb(8000, 8000), "image/png"),  # 64 MP of zeros in ~200 KB
    "bomb.gif": (img.gif_header_only(65535, 65535), "image/gif"),
    "icon.ico": (img.encode("ICO", (32, 32)), "image/x-icon"),
}


def _app(state: ImageServer) -> web.Application:
    async def files(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        state.hits[request.path] += 1
        state.hosts.append(request.headers.get("Host", ""))
        if name not in FILES:
            raise web.HTTPNotFound()
        body, kind = FILES[name]
        if "delay" in request.query:
            await asyncio.sleep(float(request.query["delay"]))
        return web.Response(body=body, content_type=kind)

    async def slow(request: web.Request) -> web.StreamResponse:
        state.hits[request.path] += 1
        await asyncio.sleep(60)  # far past any fetch limit: only the limit can end the wait
        return web.Response(body=PNG, content_type="image/png")

    async def trickle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        resp.content_length = len(PNG)
        await resp.prepare(request)
        for i in range(len(PNG)):
            await resp.write(PNG[i : i + 1])
            await asyncio.sleep(0.1)
        return resp

    async def huge(request: web.Request) -> web.StreamResponse:
        state.hits[request.path] += 1
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        if "declared" in request.query:
            resp.content_length = HUGE
        else:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        state.sent[request.path] = 0
        chunk = PNG + b"\0" * (64 * 1024 - len(PNG))
        try:
            while state.sent[request.path] < HUGE:
                await resp.write(chunk)
                state.sent[request.path] += len(chunk)
                await asyncio.sleep(0.002)
        except (ConnectionError, asyncio.CancelledError):
            pass
        return resp

    async def redirect(request: web.Request) -> web.StreamResponse:
        state.hits[request.path] += 1
        hops = int(request.query.get("hops", "0"))
        if hops > 0:
            raise web.HTTPFound(f"/redirect?hops={hops - 1}")
        raise web.HTTPFound(request.query.get("to", "/files/ok.png"))

    async def status(request: web.Request) -> web.StreamResponse:
        return web.Response(status=int(request.match_info["code"]), body=PNG, content_type="image/png")

    async def see_other(request: web.Request) -> web.StreamResponse:
        raise web.HTTPSeeOther("/echo")

    async def temporary(request: web.Request) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect("/echo")

    async def echo(request: web.Request) -> web.StreamResponse:
        return web.json_response({"method": request.method, "body": (await request.read()).decode()})

    app = web.Application()
    app.router.add_get("/files/{name}", files)
    app.router.add_get("/slow", slow)
    app.router.add_get("/trickle", trickle)
    app.router.add_get("/huge", huge)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/status/{code}", status)
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/see-other", see_other)
    app.router.add_route("*", "/temporary", temporary)
    return app


async def _raw(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Hand-written HTTP responses that aiohttp's server would refuse to send."""
    try:
        line = (await reader.readline()).decode()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        path = line.split(" ")[1] if " " in line else "/"
        if path == "/short-declared":  # declares 1000 bytes, sends a whole (larger) image
            head, body = b"Content-Length: 1000\r\n", NOISE_PNG
        elif path == "/long-declared":  # declares more than it sends, then hangs up
            head, body = f"Content-Length: {len(PNG) * 10}\r\n".encode(), PNG
        else:  # no length, body until close, over the cap
            head, body = b"Connection: close\r\n", PNG + b"\0" * HUGE
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n" + head + b"\r\n")
        writer.write(body)
        await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


@pytest_asyncio.fixture(scope="session")
async def image_server():
    state = ImageServer()
    runner = web.AppRunner(_app(state), shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    raw = await asyncio.start_server(_raw, "127.0.0.1", 0)
    state.raw_port = raw.sockets[0].getsockname()[1]
    yield state
    raw.close()
    await runner.cleanup()


@pytest.fixture
def settings() -> ImageSettings:
    # generous time: these tests share busy CI machines; the timeout tests set their own limit
    return ImageSettings(allow_loopback=True, fetch_timeout_s=10.0)


@pytest_asyncio.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def resolver() -> FakeResolver:
    return FakeResolver()


@pytest.fixture
def loader(settings, session, resolver) -> ImageLoader:
    return ImageLoader(settings, session, resolver=resolver)
