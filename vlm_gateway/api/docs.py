"""The API reference at ``/schema``: Swagger UI served from this machine (no CDN), so it works offline.

- ``GET /schema``, ``/schema/swagger``   the Swagger UI page (the schema is inlined in it)
- ``GET /schema/openapi.json``           the OpenAPI document
- ``GET /schema/assets/{file}``          Swagger UI's JS, CSS and favicon

Swagger UI's files come from the ``swagger-ui-py`` distribution (``swagger_ui/static/``, installed as a
dependency), never from a copy in this repository. Only the Swagger plugin is configured: Litestar's
default set (ReDoc, Stoplight Elements, RapiDoc) would load its scripts from CDNs.
All public (``opt={"public": True}``, see ``vlm_gateway.api.auth``): the page holds nothing but the schema.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from litestar import Router
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router

PATH = "/schema"
ASSETS = f"{PATH}/assets"
_PUBLIC = {"public": True}


def swagger_ui_static() -> Path:
    """The installed ``swagger_ui/static`` folder (found without importing ``swagger_ui``)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the API docs need the swagger-ui-py package (a dependency of vlm-gateway)")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def _version() -> str:
    try:
        return importlib.metadata.version("vlm-gateway")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def openapi_config() -> OpenAPIConfig:
    """``/schema``: Swagger UI (also at ``/schema/swagger``) and ``openapi.json``, all same-origin and public."""
    swagger = SwaggerRenderPlugin(
        js_url=f"{ASSETS}/swagger-ui-bundle.js",
        css_url=f"{ASSETS}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS}/swagger-ui-standalone-preset.js",
        favicon=f'<link rel="icon" type="image/png" href="{ASSETS}/favicon-32x32.png">',
        path=["/", "/swagger"],
    )
    assets = create_static_files_router(ASSETS.removeprefix(PATH), directories=[swagger_ui_static()],
                                        name="docs_assets", include_in_schema=False, opt=_PUBLIC)
    router = Router(PATH, route_handlers=[assets], include_in_schema=False, opt=_PUBLIC)
    return OpenAPIConfig(title="VLM Gateway", version=_version(), path=PATH, render_plugins=[swagger],
                         openapi_router=router)
