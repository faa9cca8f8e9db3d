"""The playground: one static page (HTML, vanilla JS, CSS in ``static/``) for trying the gateway by hand.

- ``GET /``                       redirects to ``/playground``
- ``GET /playground``             the page
- ``GET /playground/{name}``      its assets (``app.js``, ``style.css``)

All public (``opt={"public": True}``): the page asks for the API key itself and sends it with the
API calls it makes (``/v1/models``, ``/v1/chat/completions``, ``/v1/chat/completions/render``).
``Settings.playground = false`` leaves these routes out, so ``/`` and ``/playground`` are 404.
The files ship as package data and are read with ``importlib.resources`` (no CDN, no build step).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from litestar import Response, get
from litestar.exceptions import NotFoundException
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath
from litestar.response import Redirect

from vlm_gateway.settings import Settings

ASSETS = {  # what /playground/{name} serves, and as what
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
_PUBLIC = {"public": True}
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


@cache
def asset(name: str) -> bytes:
    """One of the page's files, read once from the package."""
    return (files(__name__) / "static" / name).read_bytes()


def _file(name: str) -> Response[bytes]:
    if name not in ASSETS:
        raise NotFoundException(f"no playground file {name!r}")
    return Response(asset(name), media_type=ASSETS[name], headers=_HEADERS)


@get("/", opt=_PUBLIC, include_in_schema=False)
async def root() -> Redirect:
    return Redirect("/playground", status_code=302)


@get("/playground", opt=_PUBLIC, include_in_schema=False)
async def page() -> Response[bytes]:
    return _file("index.html")


@get("/playground/{name:str}", opt=_PUBLIC, include_in_schema=False)
async def page_asset(name: FromPath[str]) -> Response[bytes]:
    return _file(name)


def playground_routes(settings: Settings) -> list[HTTPRouteHandler]:
    """The playground's routes, or none when ``settings.playground`` is off."""
    return [root, page, page_asset] if settings.playground else []
