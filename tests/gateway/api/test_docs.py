"""The API reference at /schema with the scripted engine: Swagger UI whose every script, stylesheet and icon
is served by the gateway itself (from the swagger-ui-py package, no CDN), public although keys are on, and
a valid openapi.json that states what the server enforces: msgspec's bounds on every request body, the
bearer key (none on the public routes), the list routes' ``limit`` and ``order``. No browser here: the
page's references are parsed and each one fetched."""

from __future__ import annotations

from collections import Counter
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import msgspec
import pytest
from litestar.routes import HTTPRoute
from litestar.testing import TestClient

from tests.gateway.api.test_routes import ScriptedEngine
from vlm_gateway.app import create_app
from vlm_gateway.limits import ConfigKey, LimitSettings
from vlm_gateway.limits.keys import hash_secret
from vlm_gateway.settings import ModelSettings, Settings

SECRET = "vlm-test-docs-secret"
KEYS = [ConfigKey(name="tester", hash=hash_secret(SECRET), rpm=0, concurrency=0)]
PAGES = ["/schema", "/schema/swagger"]
TYPES = {".js": ("text/javascript", "application/javascript"), ".css": ("text/css",), ".png": ("image/png",)}
BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "minItems",
          "maxItems", "minProperties", "maxProperties")
PAGED = {"/v1/files": 10_000, "/v1/batches": 100, "/v1/responses/{response_id}/input_items": 100}  # limit's most
ORDERED = {"/v1/files", "/v1/responses/{response_id}/input_items"}


@pytest.fixture(scope="module")
def client(tiny_checkpoint):
    settings = Settings(models=[ModelSettings(id="m", checkpoint=str(tiny_checkpoint))],
                        limits=LimitSettings(keys=KEYS))
    with TestClient(create_app(settings, engine_factory=lambda model, session: ScriptedEngine())) as c:
        yield c


class Refs(HTMLParser):
    """Every ``src=`` and ``href=`` value in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value is not None]


def refs(html: str) -> list[str]:
    parser = Refs()
    parser.feed(html)
    parser.close()
    return parser.urls


def test_keys_are_on(client) -> None:
    assert client.get("/v1/models").status_code == 401  # so the 200s below are the docs being public


@pytest.mark.parametrize("path", PAGES)
def test_docs_page_is_swagger_ui_with_only_local_references(client, path) -> None:
    r = client.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "SwaggerUIBundle(" in r.text and "<title>VLM Gateway</title>" in r.text
    urls = refs(r.text)
    assert len(urls) >= 4  # favicon, stylesheet, bundle, standalone preset
    external = [u for u in urls if urlsplit(u).scheme or urlsplit(u).netloc]  # http(s)://, //host, data:, ...
    assert not external, f"the docs page loads from elsewhere: {external}"


def test_every_asset_the_page_references_is_served_without_a_key(client) -> None:
    urls = {u for path in PAGES for u in refs(client.get(path).text)}
    assert {u.rsplit("/", 1)[-1] for u in urls} >= {"swagger-ui-bundle.js", "swagger-ui-standalone-preset.js",
                                                    "swagger-ui.css", "favicon-32x32.png"}
    for url in sorted(urls):
        r = client.get(url)
        assert r.status_code == 200, url
        suffix = url[url.rindex("."):]
        assert r.headers["content-type"].startswith(TYPES[suffix]), (url, r.headers["content-type"])
        assert len(r.content) > (100_000 if suffix == ".js" else 1_000), url
    bundle = client.get("/schema/assets/swagger-ui-bundle.js").text
    assert "SwaggerUIBundle" in bundle


def test_no_cdn_backed_doc_sites(client) -> None:
    for path in ["/schema/redoc", "/schema/elements", "/schema/rapidoc"]:
        assert client.get(path).status_code == 404, path


def test_missing_asset_is_404(client) -> None:
    assert client.get("/schema/assets/no-such-file.js").status_code == 404


def test_openapi_json_is_public_and_valid(client) -> None:
    r = client.get("/schema/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.") and doc["info"]["title"] == "VLM Gateway"
    assert "post" in doc["paths"]["/v1/chat/completions"]
    assert not any(p.startswith("/schema") for p in doc["paths"])  # the docs' own routes are not documented


@pytest.fixture(scope="module")
def doc(client) -> dict[str, Any]:
    return client.get("/schema/openapi.json").json()


def handlers(client):
    for route in client.app.routes:
        for handler in route.route_handlers if isinstance(route, HTTPRoute) else ():
            yield route.path_format, handler


def bounds(schema: Any) -> Counter[tuple[str, float]]:
    """Every bound anywhere in ``schema`` (a union's members, a list's items, a map's values)."""
    found: Counter[tuple[str, float]] = Counter()
    if isinstance(schema, dict):
        found.update((key, float(schema[key])) for key in BOUNDS if key in schema)
        for value in schema.values():
            found += bounds(value)
    elif isinstance(schema, list):
        for value in schema:
            found += bounds(value)
    return found


def test_request_bodies_state_every_bound_msgspec_enforces(client, doc) -> None:
    """Litestar drops ``Meta(ge=0)`` (a falsy bound) and bounds inside containers; the document must not."""
    structs = {h.parsed_fn_signature.parameters["data"].type_ for _, h in handlers(client)
               if "data" in h.parsed_fn_signature.parameters}
    structs = {t for t in structs if isinstance(t, type) and issubclass(t, msgspec.Struct)}
    refs = {media["schema"]["$ref"].rsplit("/", 1)[-1] for item in doc["paths"].values() for op in item.values()
            for media in op.get("requestBody", {}).get("content", {}).values() if "$ref" in media["schema"]}
    assert {t.__name__ for t in structs} == refs  # every documented body, and only those
    _, defs = msgspec.json.schema_components(sorted(structs, key=lambda t: t.__name__))
    components = doc["components"]["schemas"]
    lost = []
    for name, enforced in defs.items():
        assert name in components, name  # the same component names: nothing left out of the comparison
        for field, schema in enforced.get("properties", {}).items():
            documented = components[name]["properties"][field]
            if bounds(schema) != bounds(documented):
                lost.append(f"{name}.{field}: msgspec {dict(bounds(schema))}, document {dict(bounds(documented))}")
    assert not lost, "\n".join(lost)
    temperature = components["ChatCompletionRequest"]["properties"]["temperature"]
    assert bounds(temperature) == {("minimum", 0.0): 1, ("maximum", 2.0): 1}


def test_a_bearer_key_is_the_default_security_and_public_routes_need_none(client, doc) -> None:
    schemes = doc["components"]["securitySchemes"]
    assert [(s["type"], s["scheme"]) for s in schemes.values()] == [("http", "bearer")]
    assert doc["security"] == [{name: []} for name in schemes]
    public = set()
    for path, handler in handlers(client):
        for method in handler.http_methods:
            operation = doc["paths"].get(path, {}).get(method.lower())
            if operation is None:
                continue
            if handler.opt.get("public"):  # what vlm_gateway.api.auth lets through without a key
                public.add(path)
                assert operation["security"] == [], (method, path)
            else:
                assert "security" not in operation, (method, path)  # the document's default: the key
    assert {"/health", "/ready"} <= public
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize("path", sorted(PAGED))
def test_list_query_parameters_are_documented_with_their_bounds(doc, path) -> None:
    parameters = {p["name"]: p["schema"] for p in doc["paths"][path]["get"]["parameters"] if p["in"] == "query"}
    assert (parameters["limit"]["minimum"], parameters["limit"]["maximum"]) == (1, PAGED[path])
    if path in ORDERED:
        assert sorted(parameters["order"]["enum"]) == ["asc", "desc"]


@pytest.mark.parametrize("path", sorted(PAGED))
def test_list_query_parameters_out_of_bounds_are_400_naming_them(client, path) -> None:
    url, headers = path.replace("{response_id}", "resp_unknown"), {"Authorization": f"Bearer {SECRET}"}
    refused = [({"limit": 0}, "limit"), ({"limit": PAGED[path] + 1}, "limit")]
    refused += [({"order": "up"}, "order")] if path in ORDERED else []
    for params, param in refused:
        r = client.get(url, params=params, headers=headers)
        assert r.status_code == 400, (params, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error" and r.json()["error"]["param"] == param
    for params in [{"limit": 1}, {"limit": PAGED[path]}, *([{"order": "asc"}] if path in ORDERED else [])]:
        assert client.get(url, params=params, headers=headers).status_code in (200, 404), params  # 404: no such id


def test_no_two_paths_differ_only_in_their_parameters_names(doc) -> None:
    """OpenAPI 3 holds such paths the same (``/queue/{model}`` and ``/queue/{path}``): strict client
    generators refuse the document."""
    import re

    shapes = [re.sub(r"\{[^}]*\}", "{}", path) for path in doc["paths"]]
    assert len(shapes) == len(set(shapes)), sorted(s for s in shapes if shapes.count(s) > 1)
