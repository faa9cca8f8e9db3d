"""The API reference at ``/schema``: Swagger UI served from this machine (no CDN), so it works offline.

- ``GET /schema``, ``/schema/swagger``   the Swagger UI page (the schema is inlined in it)
- ``GET /schema/openapi.json``           the OpenAPI document
- ``GET /schema/assets/{file}``          Swagger UI's JS, CSS and favicon

Swagger UI's files come from the ``swagger-ui-py`` distribution (``swagger_ui/static/``, installed as a
dependency), never from a copy in this repository. Only the Swagger plugin is configured: Litestar's
default set (ReDoc, Stoplight Elements, RapiDoc) would load its scripts from CDNs.
All public (``opt={"public": True}``, see ``vlm_gateway.api.auth``): the page holds nothing but the schema.

The document Litestar generates is finished once, before it is first served (``_Finish``):
- every request body's bounds are msgspec's own: Litestar drops a bound of 0 (``Meta(ge=0)``: it tests the
  value's truth) and every bound inside a container (``logit_bias`` values, ``prompt``'s lists), so each
  property that msgspec constrains is replaced by msgspec's JSON Schema of it, which is what the server enforces;
- an HTTP bearer scheme is the default ``security`` (Swagger UI's Authorize button), and the public routes
  (``opt={"public": True}``, which the key check skips) say ``security: []``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
from litestar import Litestar, Request, Router
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.routes import HTTPRoute
from litestar.static_files import create_static_files_router

PATH = "/schema"
ASSETS = f"{PATH}/assets"
_PUBLIC = {"public": True}
BEARER = "bearer"  # the security scheme's name in the document
COMPONENTS = "#/components/schemas/"
CONSTRAINTS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minLength",
                         "maxLength", "pattern", "minItems", "maxItems", "minProperties", "maxProperties"})


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


def walk(schema: Any) -> Iterator[dict[str, Any]]:
    """Every dict (sub-schema) inside ``schema``, itself included."""
    if isinstance(schema, dict):
        yield schema
        for value in schema.values():
            yield from walk(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from walk(value)


def body_structs(app: Litestar) -> list[type[msgspec.Struct]]:
    """The Structs the routes decode request bodies into (``data: SomeStruct``), in route order."""
    found: dict[type[msgspec.Struct], None] = {}
    for route in app.routes:
        for handler in route.route_handlers if isinstance(route, HTTPRoute) else ():
            data = handler.parsed_fn_signature.parameters.get("data")
            if data is not None and isinstance(data.type_, type) and issubclass(data.type_, msgspec.Struct):
                found[data.type_] = None
    return list(found)


def enforce_bounds(doc: dict[str, Any], structs: list[type[msgspec.Struct]]) -> None:
    """Each property of ``structs`` (and the Structs inside them) that msgspec constrains, as msgspec's schema."""
    components = doc.get("components", {}).get("schemas", {})
    _, defs = msgspec.json.schema_components(structs, ref_template=COMPONENTS + "{name}")
    for name, struct in defs.items():
        documented = components.get(name, {}).get("properties")
        for field, schema in struct.get("properties", {}).items():
            if documented is None or field not in documented or not any(CONSTRAINTS & s.keys() for s in walk(schema)):
                continue
            refs = [s["$ref"].removeprefix(COMPONENTS) for s in walk(schema) if "$ref" in s]
            if all(ref in components for ref in refs):  # else leave Litestar's (the test names what differs)
                documented[field] = schema


def mark_public(doc: dict[str, Any], app: Litestar) -> None:
    """``security: []`` on each documented operation of a public route (no key needed)."""
    for route in app.routes:
        for handler in route.route_handlers if isinstance(route, HTTPRoute) else ():
            if handler.opt.get("public"):
                for method in handler.http_methods:
                    operation = doc["paths"].get(route.path_format, {}).get(method.lower())
                    if operation is not None:
                        operation["security"] = []


class _Finish:
    """Finishes the app's document in place, once (Litestar builds it once and hands the same dict to every
    render plugin): see the module's docstring."""

    def __init__(self) -> None:
        self._done: dict[str, Any] | None = None

    def __call__(self, request: Request[Any, Any, Any], doc: dict[str, Any]) -> dict[str, Any]:
        if doc is not self._done:
            enforce_bounds(doc, body_structs(request.app))
            mark_public(doc, request.app)
            self._done = doc
        return doc


class _Swagger(SwaggerRenderPlugin):
    def __init__(self, finish: _Finish, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.finish = finish

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return super().render(request, self.finish(request, openapi_schema))


class _Json(JsonRenderPlugin):
    def __init__(self, finish: _Finish) -> None:
        super().__init__()
        self.finish = finish

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return super().render(request, self.finish(request, openapi_schema))


def openapi_config() -> OpenAPIConfig:
    """``/schema``: Swagger UI (also at ``/schema/swagger``) and ``openapi.json``, all same-origin and public."""
    finish = _Finish()
    swagger = _Swagger(
        finish,
        js_url=f"{ASSETS}/swagger-ui-bundle.js",
        css_url=f"{ASSETS}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS}/swagger-ui-standalone-preset.js",
        favicon=f'<link rel="icon" type="image/png" href="{ASSETS}/favicon-32x32.png">',
        path=["/", "/swagger"],
    )
    assets = create_static_files_router(ASSETS.removeprefix(PATH), directories=[swagger_ui_static()],
                                        name="docs_assets", include_in_schema=False, opt=_PUBLIC)
    router = Router(PATH, route_handlers=[assets], include_in_schema=False, opt=_PUBLIC)
    bearer = SecurityScheme(type="http", scheme="bearer",
                            description="An API key: `Authorization: Bearer <key>` (once keys exist).")
    return OpenAPIConfig(title="VLM Gateway", version=_version(), path=PATH, render_plugins=[swagger, _Json(finish)],
                         openapi_router=router, components=Components(security_schemes={BEARER: bearer}),
                         security=[{BEARER: []}])
