"""The API reference at /schema with the scripted engine: Swagger UI whose every script, stylesheet and icon
is served by the gateway itself (from the swagger-ui-py package, no CDN), public although keys are on, and
a valid openapi.json. No browser here: the page's references are parsed and each one fetched."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
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
