"""``data:`` URIs: parsing (tolerant of whitespace and missing padding) and log-safe descriptions.

Nothing here ever puts an image payload into a message: :func:`describe_url` renders a data URI as
``data:image/png;base64,…(N bytes)`` and truncates long http(s) URLs.
"""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import unquote_to_bytes

from vlm_gateway.errors import ImageError

_WHITESPACE = b" \t\r\n\f\v"
_URLSAFE = bytes.maketrans(b"-_", b"+/")
_SAFE_MEDIA = re.compile(r"[^A-Za-z0-9.+/;=_-]")
_URL_MAX = 96
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]{0,15}):")


def is_data_uri(url: str) -> bool:
    """True when ``url`` uses the ``data:`` scheme (case-insensitive)."""
    return url[:5].lower() == "data:"


def _split(url: str) -> tuple[str, str]:
    """``data:<header>,<payload>`` → (header, payload); raises when there is no comma."""
    comma = url.find(",", 5)
    if comma < 0:
        raise ImageError("invalid data URI: missing ',' before the payload", code="invalid_image_url")
    return url[5:comma], url[comma + 1 :]


def decode_data_uri(url: str, *, max_bytes: int) -> bytes:
    """Return the bytes of a data URI.

    Base64 payloads may contain whitespace and may lack ``=`` padding; the URL-safe alphabet is
    accepted too. Non-base64 payloads are percent-decoded. Payloads whose decoded size would exceed
    ``max_bytes`` are refused before decoding. Raises :class:`ImageError` (``param`` unset; the caller
    fills it in).
    """
    header, payload = _split(url)
    is_b64 = header.lower().rstrip().endswith(";base64")
    try:
        raw = payload.encode("ascii")
    except UnicodeEncodeError:
        raise ImageError("invalid data URI: payload is not ASCII", code="invalid_image_url") from None
    if not is_b64:
        if len(raw) // 3 > max_bytes:  # every byte is at least one character, at most three
            raise _too_large(len(raw), max_bytes)
        data = unquote_to_bytes(raw)
        if len(data) > max_bytes:
            raise _too_large(len(data), max_bytes)
        return data
    raw = raw.translate(None, _WHITESPACE).rstrip(b"=").translate(_URLSAFE)
    if len(raw) * 3 // 4 > max_bytes:
        raise _too_large(len(raw) * 3 // 4, max_bytes)
    if len(raw) % 4 == 1:
        raise ImageError("invalid data URI: malformed base64 payload", code="invalid_image_url")
    raw += b"=" * (-len(raw) % 4)
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("invalid data URI: malformed base64 payload", code="invalid_image_url") from None


def _too_large(size: int, max_bytes: int) -> ImageError:
    return ImageError(f"image is too large ({size} bytes; the limit is {max_bytes})", code="image_too_large")


def describe_url(url: str) -> str:
    """A log- and error-safe rendering of a URL: never a payload, a query string or more than ~100 chars.

    ``data:image/png;base64,…(N bytes)``; ``https://host/path?…`` (query hidden: it may hold a signed
    token; credentials before the host and the fragment left out); anything else only as its scheme and
    length (it may be a bare base64 payload).
    """
    if is_data_uri(url):
        comma = url.find(",", 5)
        header = url[5:comma] if comma >= 0 else url[5:40]
        header = _SAFE_MEDIA.sub("", header)[:48]
        size = len(url) - comma - 1 if comma >= 0 else len(url)
        return f"data:{header},…({size} bytes)"
    scheme = _SCHEME.match(url)
    if scheme is None or scheme.group(1).lower() not in ("http", "https"):
        prefix = scheme.group(0) if scheme else ""
        return f"{prefix}…({len(url)} chars)"
    base, sep, _query = url.split("#", 1)[0].partition("?")
    scheme_end = base.find("//") + 2
    at = base.rfind("@", scheme_end, (base.find("/", scheme_end) + 1 or len(base) + 1) - 1)  # (as parsers split)
    if scheme_end >= 2 and at >= 0:  # credentials (user:password@) are never shown
        base = base[:scheme_end] + "…@" + base[at + 1:]
    base = "".join(ch if ch.isprintable() else "?" for ch in base[: _URL_MAX + 1])
    base = base if len(base) <= _URL_MAX else base[:_URL_MAX] + "…"
    return base + ("?…" if sep else "")
