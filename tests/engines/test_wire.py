"""``_wire.post``: a request that meets a connection the server closed before answering is sent once more;
one the server never answers fails as before (the pool then fails over)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from vlm_gateway.engines._wire import post

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


async def raw_server(answers: list[bytes | None]):
    """A loopback HTTP server that answers its n-th connection's request with ``answers[n]`` (None: it reads
    the request and closes the connection without a byte, as a server closing an idle keep-alive does)."""
    connections = iter(answers)
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        answer = next(connections, None)
        if answer is not None:
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", seen


async def test_a_request_the_server_dropped_unanswered_is_sent_again() -> None:
    server, url, seen = await raw_server([None, OK])
    async with server, aiohttp.ClientSession() as session, await post(
            session, url + "/x", b"{}", {"Content-Type": "application/json"}, aiohttp.ClientTimeout(total=10)) as resp:
        assert resp.status == 200 and await resp.json() == {}
    assert len(seen) == 2  # the same request, twice


async def test_a_server_that_never_answers_still_fails() -> None:
    server, url, seen = await raw_server([None, None])
    async with server, aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await post(session, url + "/x", b"{}", {}, aiohttp.ClientTimeout(total=10))
    assert len(seen) == 2  # once more, not more
