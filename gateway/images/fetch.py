"""Downloads of image URLs through the shared aiohttp session, with the size and time limits.

(Interim version: the SSRF guard and caching land next.)
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from gateway.errors import ImageError
from gateway.images.datauri import describe_url
from gateway.settings import ImageSettings

CHUNK = 64 * 1024


class Fetcher:
    """Fetches image bytes by URL."""

    def __init__(self, settings: ImageSettings, session: aiohttp.ClientSession, redis: Any = None,
                 resolver: Any = None) -> None:
        self.settings = settings
        self.session = session
        self._stats = {"downloads": 0}

    async def fetch(self, url: str) -> bytes:
        try:
            return await asyncio.wait_for(self._download(url), self.settings.fetch_timeout_s)
        except asyncio.TimeoutError:
            raise ImageError(
                f"timed out downloading {describe_url(url)!r} (limit {self.settings.fetch_timeout_s}s)",
                code="image_fetch_timeout",
            ) from None
        except aiohttp.ClientError as exc:
            raise ImageError(
                f"could not download {describe_url(url)!r}: {type(exc).__name__}", code="image_fetch_failed"
            ) from None

    async def _download(self, url: str) -> bytes:
        self._stats["downloads"] += 1
        limit = self.settings.max_image_bytes
        async with self.session.get(url, allow_redirects=False) as resp:
            if resp.status != 200:
                raise ImageError(f"image URL {describe_url(url)!r} returned HTTP {resp.status}",
                                 code="image_fetch_failed")
            if resp.content_length is not None and resp.content_length > limit:
                raise ImageError(f"image is too large ({resp.content_length} bytes; the limit is {limit})",
                                 code="image_too_large")
            buf = bytearray()
            async for chunk in resp.content.iter_chunked(CHUNK):
                buf += chunk
                if len(buf) > limit:
                    raise ImageError(f"image is too large (over {limit} bytes)", code="image_too_large")
            return bytes(buf)

    def stats(self) -> dict[str, int]:
        return dict(self._stats)
