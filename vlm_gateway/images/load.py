"""The image loader: every image of one request, validated, fetched, decoded and sized, concurrently.

``ImageLoader.load(sources, rule)`` returns one :class:`LoadedImage` per :class:`ImageSource`, in order,
or raises :class:`vlm_gateway.errors.ImageError` (400) naming the offending part in ``param``. Base64
decoding, hashing, Pillow decoding, resizing and encoding all run in worker threads, never on the loop.
Results are cached by (content hash, detail, rule), whatever the bytes came from (URL, data URI, bytes in
hand); fetched bytes by URL (see :mod:`.fetch`).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any, Literal

import aiohttp
import msgspec

from vlm_gateway.cache import LRUCache, SingleFlight, Stats
from vlm_gateway.engines import ImageFeatures
from vlm_gateway.errors import GatewayError, ImageError
from vlm_gateway.images.datauri import decode_data_uri, describe_url, is_data_uri
from vlm_gateway.images.decode import SizedImage, prepare
from vlm_gateway.images.features import Preprocessor
from vlm_gateway.images.fetch import Fetcher
from vlm_gateway.images.guard import Resolver
from vlm_gateway.images.resize import DetailRule
from vlm_gateway.settings import ImageSettings

__all__ = ["DetailRule", "ImageLoader", "ImageSource", "LoadedImage"]

MAX_URL_CHARS = 8192  # for http(s) URLs; data URIs are bounded by max_image_bytes


class ImageSource(msgspec.Struct, frozen=True):
    """One image of a request: its URL (http(s) or data URI), the requested detail, and where it was.

    With ``data`` (bytes already in hand, e.g. an uploaded file's content: see
    ``vlm_gateway.files.FileStore.image_source``) nothing is fetched or decoded from ``url``, which only
    names the image (the file id); the bytes get the same checks, sizing and result cache as a URL's.
    """

    url: str
    detail: Literal["auto", "low", "high"] = "auto"
    param: str = "image"  # e.g. "messages[0].content[1].image_url"
    data: bytes | None = None


class LoadedImage(msgspec.Struct, frozen=True):
    """An image ready for the engine.

    ``url`` is a data URI: the original bytes unchanged when no resize was needed, else a PNG.
    ``width``/``height``/``format``/``sha256`` describe the bytes in ``url``; ``features`` is the model's
    input made from them, when the load was asked for a preprocessor.
    """

    url: str
    width: int
    height: int
    format: str
    sha256: str
    features: ImageFeatures | None = None


_Key = tuple[str, str, DetailRule, Preprocessor | None]  # content hash, detail, size rule, preprocessor

# Data URIs and bytes up to this size are decoded and hashed on the event loop (tens of microseconds).
INLINE_BYTES = 64 * 1024


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _decode_uri(url: str, max_bytes: int) -> tuple[bytes, str]:
    data = decode_data_uri(url, max_bytes=max_bytes)
    return data, _digest(data)


class ImageLoader:
    """Loads images under the limits of :class:`ImageSettings`; one per app, sharing its session/Redis."""

    def __init__(
        self, settings: ImageSettings, session: aiohttp.ClientSession, redis: Any = None,
        resolver: Resolver | None = None, *, threads: int | None = None,
    ) -> None:
        self.settings = settings
        self._stats = Stats()
        self._fetcher = Fetcher(settings, session, redis=redis, resolver=resolver, stats=self._stats)
        self._results: LRUCache[_Key, SizedImage] = LRUCache(
            settings.cache_entries, settings.cache_ttl_s, max_bytes=settings.cache_max_bytes,
            sizeof=lambda p: len(p.url) + (len(p.features.data) if p.features else 0),
        )
        self._decoding: SingleFlight[_Key, SizedImage] = SingleFlight()
        # the digest of each data URI decoded lately (a URI is looked up by its text: no base64 decoding, no
        # hashing), so an image a client resends (every turn of a conversation) costs a dict lookup
        self._uri_digests: LRUCache[str, tuple[str, int]] = LRUCache(
            settings.cache_entries, settings.cache_ttl_s, max_bytes=settings.cache_max_bytes // 4,
            sizeof=lambda known: known[1])
        self._threads = asyncio.Semaphore(threads or max(2, os.cpu_count() or 2))

    async def close(self) -> None:
        """Let pending cache writes to Redis finish (at shutdown)."""
        await self._fetcher.drain()

    def stats(self) -> dict[str, int]:
        """Counters: memory/Redis hits and misses, downloads, shared fetches, result-cache hits…"""
        return self._stats.snapshot()

    async def load(self, sources: list[ImageSource], rule: DetailRule,
                   pre: Preprocessor | None = None) -> list[LoadedImage]:
        """Load all images of one request concurrently, in order; the first failure is raised. With
        ``pre``, each comes with the model's input made from it (cached with it).
        (How many images a request may hold is the pipeline's check, made once with its ``param``.)"""
        if len(sources) <= 1:  # nothing to overlap: no task to create
            return [await self._load_one(src, rule, pre) for src in sources]
        tasks = [asyncio.ensure_future(self._load_one(src, rule, pre)) for src in sources]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            pending = [t for t in tasks if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return [task.result() for task in tasks]

    async def _load_one(self, src: ImageSource, rule: DetailRule, pre: Preprocessor | None) -> LoadedImage:
        try:
            done = self._known(src, rule, pre)
            if done is None:
                data, digest = await self._bytes(src)
                key = (digest, src.detail, rule, pre)
                done = self._results.get(key)
                if done is not None:
                    self._stats["result_hits"] += 1
                else:
                    self._stats["result_misses"] += 1
                    done, _shared = await self._decoding.run(key, lambda: self._prepare(key, data))
        except GatewayError as exc:
            # a fresh error per source: shared downloads/decodes must not share exception objects
            raise ImageError(exc.message, param=src.param, code=exc.code) from None
        return LoadedImage(done.url, done.width, done.height, done.format, done.sha256, done.features)

    def _known(self, src: ImageSource, rule: DetailRule, pre: Preprocessor | None) -> SizedImage | None:
        """The result for a data URI decoded lately, found by its text (nothing decoded or hashed), else None."""
        known = self._uri_digests.get(src.url) if src.data is None else None
        done = self._results.get((known[0], src.detail, rule, pre)) if known is not None else None
        if done is not None:
            self._stats["data_uris"] += 1
            self._stats["known_data_uris"] += 1
            self._stats["result_hits"] += 1
        return done

    async def _prepare(self, key: _Key, data: bytes) -> SizedImage:
        digest, detail, rule, pre = key
        done = await self._in_thread(prepare, data, digest, detail, rule, self.settings.max_pixels, pre)
        self._results.put(key, done)
        return done

    async def _bytes(self, src: ImageSource) -> tuple[bytes, str]:
        if src.data is not None:
            self._stats["raw_bytes"] += 1
            if len(src.data) > self.settings.max_image_bytes:
                raise ImageError(f"image is too large ({len(src.data)} bytes; the limit is "
                                 f"{self.settings.max_image_bytes})", code="image_too_large")
            return src.data, await self._in_thread(_digest, src.data, size=len(src.data))
        if is_data_uri(src.url):
            self._stats["data_uris"] += 1
            data, digest = await self._in_thread(_decode_uri, src.url, self.settings.max_image_bytes,
                                                 size=len(src.url))
            self._uri_digests.put(src.url, (digest, len(src.url)))
            return data, digest
        scheme = src.url.split(":", 1)[0].lower() if ":" in src.url else ""
        if scheme not in ("http", "https"):
            raise ImageError(
                f"unsupported image URL {describe_url(src.url)!r}: use http(s) or a data URI",
                code="invalid_image_url",
            )
        if len(src.url) > MAX_URL_CHARS:
            raise ImageError(f"image URL is too long (over {MAX_URL_CHARS} characters)", code="invalid_image_url")
        data = await self._fetcher.fetch(src.url)
        return data, await self._in_thread(_digest, data, size=len(data))

    async def _in_thread(self, fn: Any, *args: Any, size: int | None = None) -> Any:
        """``fn(*args)`` in a worker thread, or at once when ``size`` (bytes of work) is small: a hop to a
        thread costs more than decoding or hashing a few kilobytes."""
        if size is not None and size <= INLINE_BYTES:
            return fn(*args)
        async with self._threads:
            return await asyncio.to_thread(fn, *args)
