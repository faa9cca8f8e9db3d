"""The image loader: every image of one request, validated, fetched, decoded and sized, concurrently.

``ImageLoader.load(sources, rule)`` returns one :class:`LoadedImage` per :class:`ImageSource`, in order,
or raises a :mod:`gateway.errors` error naming the offending part (``param``).
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import aiohttp
import msgspec

from gateway.errors import GatewayError, ImageError, InvalidRequest
from gateway.images.datauri import decode_data_uri, describe_url, is_data_uri
from gateway.images.decode import prepare
from gateway.images.fetch import Fetcher
from gateway.images.resize import DetailRule
from gateway.settings import ImageSettings

__all__ = ["DetailRule", "ImageLoader", "ImageSource", "LoadedImage"]


class ImageSource(msgspec.Struct, frozen=True):
    """One image of a request: its URL (http(s) or data URI), the requested detail, and where it was."""

    url: str
    detail: Literal["auto", "low", "high"] = "auto"
    param: str = "image"  # e.g. "messages[0].content[1].image_url"


class LoadedImage(msgspec.Struct, frozen=True):
    """An image ready for the engine.

    ``url`` is a data URI: the original bytes unchanged when no resize was needed, else a PNG.
    ``width``/``height``/``format``/``sha256`` describe the bytes in ``url``.
    """

    url: str
    width: int
    height: int
    format: str
    sha256: str


def _with_param(exc: GatewayError, param: str) -> GatewayError:
    """A copy of ``exc`` naming ``param`` (shared results must not share exception objects)."""
    kind = type(exc) if isinstance(exc, InvalidRequest) else ImageError
    return kind(exc.message, param=param, code=exc.code)


class ImageLoader:
    """Loads images with the limits of :class:`ImageSettings`; one instance per app (shared session)."""

    def __init__(
        self,
        settings: ImageSettings,
        session: aiohttp.ClientSession,
        redis: Any = None,
        resolver: Any = None,
    ) -> None:
        self.settings = settings
        self._fetcher = Fetcher(settings, session, redis=redis, resolver=resolver)

    async def load(self, sources: list[ImageSource], rule: DetailRule) -> list[LoadedImage]:
        """Load all images of one request concurrently; order kept; the first failure is raised."""
        limit = self.settings.max_images_per_request
        if len(sources) > limit:
            raise InvalidRequest(
                f"too many images in one request ({len(sources)}; the limit is {limit})",
                param="messages",
                code="too_many_images",
            )
        return list(await asyncio.gather(*(self._load_one(src, rule) for src in sources)))

    async def _load_one(self, src: ImageSource, rule: DetailRule) -> LoadedImage:
        try:
            data = await self._bytes(src)
            done = await asyncio.to_thread(prepare, data, src.detail, rule, self.settings.max_pixels)
        except GatewayError as exc:
            raise _with_param(exc, src.param) from None
        return LoadedImage(done.url, done.width, done.height, done.format, done.sha256)

    async def _bytes(self, src: ImageSource) -> bytes:
        if is_data_uri(src.url):
            return await asyncio.to_thread(decode_data_uri, src.url, max_bytes=self.settings.max_image_bytes)
        scheme = src.url.split(":", 1)[0].lower() if ":" in src.url else ""
        if scheme not in ("http", "https"):
            raise ImageError(
                f"unsupported image URL {describe_url(src.url)!r}: use http(s) or a data URI",
                code="invalid_image_url",
            )
        return await self._fetcher.fetch(src.url)

    def stats(self) -> dict[str, int]:
        """Cache and download counters."""
        return self._fetcher.stats()
