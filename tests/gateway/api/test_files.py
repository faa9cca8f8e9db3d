"""/v1/files over HTTP: the routes with the API-key guard and two keys (TestClient), then the real OpenAI
SDK against the app served by uvicorn, on the disk and on the Redis backend. No model is needed."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from litestar.testing import TestClient

from tests.gateway.images import imagedata as img
from tests.gateway.state.fixtures import REDIS_URL, prefix, redis_client  # noqa: F401
from tests.helpers import ALICE, BOB, auth, png_bytes, serve_app
from tests.helpers import TEST_KEYS as KEYS
from vlm_gateway.app import create_app
from vlm_gateway.files import FileSettings
from vlm_gateway.jobs.settings import JobSettings
from vlm_gateway.limits import LimitSettings
from vlm_gateway.settings import Settings, SettingsError

MAX_BYTES = 200_000
PNG = png_bytes(64, 48)


def upload(client: TestClient, secret: str, data: bytes = PNG, purpose: str | None = "vision",
           name: str = "cat.png"):
    form = {"purpose": purpose} if purpose is not None else {}
    return client.post("/v1/files", files={"file": (name, data, "image/png")}, data=form, headers=auth(secret))


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[TestClient]:
    files = FileSettings(dir=str(tmp_path_factory.mktemp("files")), max_bytes=MAX_BYTES, quota_bytes=3 * MAX_BYTES)
    with TestClient(create_app(Settings(limits=LimitSettings(keys=KEYS), files=files))) as c:
        yield c


def error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body


def test_routes_need_an_api_key(client) -> None:
    assert client.get("/v1/files").status_code == 401
    assert client.post("/v1/files", files={"file": ("a.png", PNG)}, data={"purpose": "vision"}).status_code == 401
    assert client.get("/v1/files", headers=auth("vlm-wrong")).status_code == 401


def test_upload_list_retrieve_content_delete(client) -> None:
    made = upload(client, ALICE).json()
    assert set(made) == {"id", "object", "bytes", "created_at", "filename", "purpose", "status", "expires_at"}
    assert (made["object"], made["bytes"], made["filename"], made["purpose"], made["status"], made["expires_at"]) == (
        "file", len(PNG), "cat.png", "vision", "processed", None)
    listed = client.get("/v1/files", headers=auth(ALICE)).json()
    assert listed["object"] == "list" and made in listed["data"] and listed["has_more"] is False
    assert client.get(f"/v1/files/{made['id']}", headers=auth(ALICE)).json() == made
    content = client.get(f"/v1/files/{made['id']}/content", headers=auth(ALICE))
    assert content.status_code == 200 and content.content == PNG
    assert content.headers["content-type"] == "image/png" and "cat.png" in content.headers["content-disposition"]
    gone = client.delete(f"/v1/files/{made['id']}", headers=auth(ALICE))
    assert gone.status_code == 200 and gone.json() == {"id": made["id"], "object": "file", "deleted": True}
    assert error(client.get(f"/v1/files/{made['id']}", headers=auth(ALICE)), 404)["param"] == "file_id"


def test_list_query_parameters(client) -> None:
    ids = [upload(client, ALICE, png_bytes(10 + i, 10), "user_data" if i == 1 else "vision").json()["id"]
           for i in range(3)]
    page = client.get("/v1/files", params={"limit": 2, "order": "asc", "after": ids[0]}, headers=auth(ALICE)).json()
    assert [f["id"] for f in page["data"]] == ids[1:] and (page["first_id"], page["last_id"]) == (ids[1], ids[2])
    vision = client.get("/v1/files", params={"purpose": "user_data"}, headers=auth(ALICE)).json()
    assert [f["id"] for f in vision["data"]] == [ids[1]]
    assert error(client.get("/v1/files", params={"limit": 0}, headers=auth(ALICE)), 400)["param"] == "limit"
    assert error(client.get("/v1/files", params={"order": "new"}, headers=auth(ALICE)), 400)["param"] == "order"
    for file_id in ids:
        client.delete(f"/v1/files/{file_id}", headers=auth(ALICE))


def test_another_keys_file_is_a_404(client) -> None:
    made = upload(client, ALICE).json()
    for method, path in (("GET", ""), ("GET", "/content"), ("DELETE", "")):
        r = client.request(method, f"/v1/files/{made['id']}{path}", headers=auth(BOB))
        assert error(r, 404)["message"] == f"No such File object: {made['id']}"
    assert client.get("/v1/files", headers=auth(BOB)).json()["data"] == []
    assert client.get(f"/v1/files/{made['id']}", headers=auth(ALICE)).status_code == 200
    client.delete(f"/v1/files/{made['id']}", headers=auth(ALICE))


@pytest.mark.parametrize("data,purpose,status,param,code", [
    (PNG, "fine-tune", 400, "purpose", "invalid_value"),
    (PNG, None, 400, "purpose", "invalid_value"),
    (b"just text", "vision", 400, "file", "invalid_image_format"),
    (img.png_header_only(20_000, 20_000), "vision", 400, "file", "image_too_large"),
    (b"", "user_data", 400, "file", "invalid_value"),
    (b"x" * (MAX_BYTES + 1), "user_data", 413, "file", "file_too_large"),  # within the body's slack
    (b"x" * (MAX_BYTES + 100_000), "user_data", 413, "file", "file_too_large"),  # refused while reading
])
def test_upload_is_checked(client, data, purpose, status, param, code) -> None:
    body = error(upload(client, ALICE, data, purpose), status)
    assert (body["param"], body["code"]) == (param, code)
    if param == "purpose":
        assert "'vision', 'user_data'" in body["message"]


def test_upload_needs_a_multipart_file(client) -> None:
    r = client.post("/v1/files", json={"file": "x", "purpose": "vision"}, headers=auth(ALICE))
    assert error(r, 400)["param"] in ("file", "purpose")
    r = client.post("/v1/files", data={"file": "not a file", "purpose": "vision"}, headers=auth(ALICE))
    assert error(r, 400)["param"] == "file"


def test_quota_exceeded_is_a_403_that_says_so(client) -> None:
    made = [upload(client, ALICE, bytes([i]) * (MAX_BYTES - 10), "user_data") for i in range(3)]
    assert all(r.status_code == 200 for r in made)
    body = error(upload(client, BOB, b"z" * 1000, "user_data"), 403)
    assert body["code"] == "quota_exceeded" and "full" in body["message"] and body["param"] == "file"
    for r in made:
        client.delete(f"/v1/files/{r.json()['id']}", headers=auth(ALICE))
    assert upload(client, BOB, b"z" * 1000, "user_data").status_code == 200


def test_redis_backend_needs_redis_url(tmp_path) -> None:
    with pytest.raises(SettingsError, match="redis_url"):
        create_app(Settings(files=FileSettings(backend="redis")))


# --- the OpenAI SDK against the served app -----------------------------------------------------------

def serve(settings: Settings):
    """The app on uvicorn in a thread; yields its /v1 base URL."""
    return serve_app(create_app(settings), start_timeout_s=30)


@pytest.fixture(params=["disk", "redis"])
def sdk_settings(request, tmp_path, prefix) -> Settings:  # noqa: F811
    files = FileSettings(dir=str(tmp_path / "files"), key_prefix=f"{prefix}{{files}}:")
    limits = LimitSettings(keys=KEYS, redis_prefix=prefix)
    if request.param == "disk":
        return Settings(limits=limits, files=files)
    request.getfixturevalue("redis_client")  # a Redis must answer (under CI); keys under `prefix` go afterwards
    return Settings(redis_url=REDIS_URL, limits=limits, files=files,
                    jobs=JobSettings(key_prefix=f"{prefix}{{jobs}}:"))


def test_openai_sdk_files_roundtrip(sdk_settings, tmp_path) -> None:
    path = tmp_path / "cat.png"
    path.write_bytes(PNG)
    with serve(sdk_settings) as base_url:
        alice = openai.OpenAI(base_url=base_url, api_key=ALICE, max_retries=0)
        bob = openai.OpenAI(base_url=base_url, api_key=BOB, max_retries=0)
        with open(path, "rb") as f:
            made = alice.files.create(file=f, purpose="vision")
        assert made.id.startswith("file-") and (made.bytes, made.filename, made.purpose, made.status) == (
            len(PNG), "cat.png", "vision", "processed")
        other = alice.files.create(file=("notes.txt", b"some notes"), purpose="user_data")
        assert [f.id for f in alice.files.list(limit=1)] == [other.id, made.id]  # auto-paged, newest first
        assert [f.id for f in alice.files.list(purpose="vision").data] == [made.id]
        assert alice.files.retrieve(made.id) == made
        content = alice.files.content(made.id)
        assert content.read() == PNG and content.response.headers["content-type"] == "image/png"

        assert bob.files.list().data == []
        with pytest.raises(openai.NotFoundError):
            bob.files.retrieve(made.id)
        with pytest.raises(openai.NotFoundError):
            bob.files.delete(made.id)
        with pytest.raises(openai.BadRequestError) as bad:
            alice.files.create(file=("x.txt", b"not an image"), purpose="vision")
        assert bad.value.param == "file"
        with pytest.raises(openai.BadRequestError) as purpose:
            alice.files.create(file=("x.png", PNG), purpose="fine-tune")
        assert purpose.value.param == "purpose"

        deleted = alice.files.delete(made.id)
        assert (deleted.id, deleted.deleted) == (made.id, True)
        with pytest.raises(openai.NotFoundError):
            alice.files.content(made.id)
        assert [f.id for f in alice.files.list()] == [other.id]
