"""Downloads of image URLs, through the SSRF guard and the shared aiohttp session, with caching.

Limits (``ImageSettings``): ``fetch_timeout_s`` for the whole download (resolution, connection,
redirects and body), ``max_image_bytes`` per image (``Content-Length`` checked first, then the streamed
body cut at the cap). Fetched bytes are cached by URL in memory (LRU, ``cache_entries`` and
``cache_max_bytes``, ``cache_ttl_s``) and, with a Redis client, in Redis with the same TTL.
Concurrent fetches of one URL share one download.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

import aiohttp

from vlm_gateway import metrics
from vlm_gateway.cache import LRUCache, SingleFlight, Stats
from vlm_gateway.errors import ImageError
from vlm_gateway.images.datauri import describe_url
from vlm_gateway.images.guard import Resolver, guarded_request
from vlm_gateway.settings import ImageSettings

log = logging.getLogger("vlm_gateway.images")

CHUNK = 64 * 1024
REDIS_TIMEOUT_S = 0.25
REDIS_PREFIX = "vlm-gateway:image-bytes:v1:"
_HEADERS = {"Accept": "image/*", "Accept-Encoding": "identity"}


def _too_large(limit: int, size: int | None = None) -> ImageError:
    what = f"{size} bytes" if size is not None else f"over {limit} bytes"
    return ImageError(f"image is too large ({what}; the limit is {limit})", code="image_too_large")


class Fetcher:
    """Fetches image bytes by http(s) URL; errors are :class:`ImageError` without ``param``."""

    def __init__(
        self, settings: ImageSettings, session: aiohttp.ClientSession, redis: Any = None,
        resolver: Resolver | None = None, *, stats: Stats | None = None,
    ) -> None:
        self.settings = settings
        self.session = session
        self.redis = redis
        self.resolver = resolver
        self.stats = stats if stats is not None else Stats()
        self._memory: LRUCache[str, bytes] = LRUCache(
            settings.cache_entries, settings.cache_ttl_s, max_bytes=settings.cache_max_bytes
        )
        self._flight: SingleFlight[str, bytes] = SingleFlight()
        self._background: set[asyncio.Task[None]] = set()

    async def fetch(self, url: str) -> bytes:
        """The bytes at ``url`` (from the caches when possible)."""
        data = self._memory.get(url)
        if data is not None:
            self.stats["memory_hits"] += 1
            return data
        self.stats["memory_misses"] += 1
        data, shared = await self._flight.run(url, lambda: self._fetch_uncached(url))
        if shared:
            self.stats["shared_fetches"] += 1
        return data

    async def _fetch_uncached(self, url: str) -> bytes:
        data = await self._redis_get(url)
        if data is None:
            data = await self._download(url)
            self._redis_put(url, data)
        self._memory.put(url, data)
        return data

    async def _download(self, url: str) -> bytes:
        self.stats["downloads"] += 1
        timeout = self.settings.fetch_timeout_s
        try:
            data = await asyncio.wait_for(self._stream(url), timeout)
        except TimeoutError:
            self.stats["download_failures"] += 1
            raise ImageError(
                f"timed out downloading {describe_url(url)!r} (limit {timeout:g}s)", code="image_fetch_timeout"
            ) from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            self.stats["download_failures"] += 1
            raise ImageError(
                f"could not download {describe_url(url)!r} ({type(exc).__name__})", code="image_fetch_failed"
            ) from None
        except ImageError:
            self.stats["download_failures"] += 1
            raise
        metrics.IMAGE_BYTES.inc(len(data))
        log.debug("fetched %s (%d bytes)", describe_url(url), len(data))
        return data

    async def _stream(self, url: str) -> bytes:
        limit = self.settings.max_image_bytes
        async with guarded_request(self.session, "GET", url, self.settings, self.resolver, headers=_HEADERS) as got:
            resp = got.response
            if resp.status != 200:
                raise ImageError(
                    f"downloading {describe_url(url)!r} failed: HTTP {resp.status}", code="image_fetch_failed"
                )
            if resp.content_length is not None and resp.content_length > limit:
                resp.close()
                raise _too_large(limit, resp.content_length)
            buf = bytearray()
            async for chunk in resp.content.iter_chunked(CHUNK):
                buf += chunk
                if len(buf) > limit:
                    resp.close()  # stop reading: drop the connection
                    raise _too_large(limit)
            return bytes(buf)

    # --- Redis ----------------------------------------------------------------------------------

    @staticmethod
    def _redis_key(url: str) -> str:
        return REDIS_PREFIX + hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()

    async def _redis_get(self, url: str) -> bytes | None:
        if self.redis is None:
            return None
        try:
            data = await asyncio.wait_for(self.redis.get(self._redis_key(url)), REDIS_TIMEOUT_S)
        except Exception as exc:  # a cache: any failure is a miss
            self.stats["redis_errors"] += 1
            log.warning("image cache: Redis get failed (%s)", type(exc).__name__)
            return None
        if not isinstance(data, (bytes, bytearray)) or len(data) > self.settings.max_image_bytes:
            self.stats["redis_misses"] += 1
            return None
        self.stats["redis_hits"] += 1
        return bytes(data)

    def _redis_put(self, url: str, data: bytes) -> None:
        if self.redis is None or self.settings.cache_ttl_s <= 0:
            return
        task = asyncio.ensure_future(self._redis_set(self._redis_key(url), data))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _redis_set(self, key: str, data: bytes) -> None:
        try:
            await asyncio.wait_for(self.redis.set(key, data, ex=self.settings.cache_ttl_s), REDIS_TIMEOUT_S * 4)
        except Exception as exc:
            self.stats["redis_errors"] += 1
            log.warning("image cache: Redis set failed (%s)", type(exc).__name__)

    async def drain(self) -> None:
        """Wait for pending background Redis writes (tests, shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
