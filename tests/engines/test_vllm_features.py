"""Images as the gateway-made model input (vLLM's ``features``) and as images under their keys (vLLM's
``content_parts`` with a ``uuid``) against a scripted token-in endpoint that keeps a multimodal cache as
vLLM does: data under a key is kept; a key sent alone that it does not hold fails the request before any
output, as vLLM 0.32 answers a cache miss (features: a 500; content parts: a 400 "Cache miss for image at
index N but data is not provided.", where even a repeat within the request must carry its data).
tests/e2e drives real vLLM servers (test_features.py)."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from tests.engines.test_vllm_remote import FakeVLLM, serve_fake
from vlm_gateway import metrics
from vlm_gateway.engines import EngineRequest, ImageFeatures, ImageKey, PlacedImage, SamplingParams
from vlm_gateway.engines.errors import EngineCacheMiss, EngineCrashed
from vlm_gateway.engines.pool import EnginePool
from vlm_gateway.engines.vllm_remote import VLLMServer


class CachingVLLM(FakeVLLM):
    def __init__(self) -> None:
        super().__init__()
        self.cache: set[str] = set()
        self.misses = 0

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        features = body.get("features")
        if features:
            keys, data = features["mm_hashes"]["image"], features["kwargs_data"]["image"]
            seen: set[str] = set()
            for key, item in zip(keys, data, strict=True):
                if item is None and key not in self.cache and key not in seen:
                    self.bodies.append(body)
                    self.misses += 1
                    error = {"message": "Internal server error", "type": "InternalServerError", "code": 500}
                    return web.json_response({"error": error}, status=500)
                seen.add(key)
            self.cache |= seen
        parts = body.get("content_parts") or []
        for i, part in enumerate(parts):
            if part.get("url") is None and part.get("uuid") not in self.cache:
                self.bodies.append(body)
                self.misses += 1
                error = {"message": f"Cache miss for image at index {i} but data is not provided.",
                         "type": "BadRequestError", "param": None, "code": 400}
                return web.json_response({"error": error}, status=400)
        self.cache |= {part["uuid"] for part in parts if "uuid" in part}
        return await super().generate(_Replayed(request, body))


class _Replayed:
    """The request with its body already read (the base fake reads it again)."""

    def __init__(self, request: web.Request, body: dict) -> None:
        self._request, self._body = request, body

    async def json(self) -> dict:
        return self._body

    def __getattr__(self, name: str):
        return getattr(self._request, name)


@pytest.fixture
async def served():
    fake = CachingVLLM()
    runner, url = await serve_fake(fake)
    async with aiohttp.ClientSession() as session:
        yield fake, url, session
    await runner.cleanup()


async def pool(url: str, session: aiohttp.ClientSession, image_cache: bool = True) -> EnginePool:
    engine = EnginePool("m", [VLLMServer(url, session, image_cache=image_cache)])
    await engine.start()
    return engine


def image(name: str, tokens: int = 2) -> ImageFeatures:
    return ImageFeatures(key=f"k-{name}", tokens=tokens, data=f"DATA-{name}")


def request(*images: ImageFeatures, stream: bool = True, usage_read: bool = True) -> EngineRequest:
    ids, placed = [1], []
    for im in images:
        placed.append(PlacedImage(len(ids), im))
        ids += [9] * im.tokens
    req = EngineRequest("r", ids + [2], ["data:image/png;base64,AAA"] * len(images), SamplingParams(max_tokens=2),
                        features=placed, usage_read=usage_read)
    req.stream = stream
    return req


def inputs(kind: str, url: str) -> float:
    return metrics.ENGINE_IMAGE_INPUTS.labels(url, kind)._value.get()


async def test_features_replace_images_with_keys_placeholders_and_data(served) -> None:
    fake, url, session = served
    engine = await pool(url, session)
    for turn, (stream, usage_read) in enumerate(((True, False), (True, True), (False, True))):
        req = request(image("a", 3), image("b", 2), stream=stream, usage_read=usage_read)
        deltas = [d async for d in engine.generate(req)]
        assert "".join(d.text for d in deltas).startswith("Hel")
        sent = fake.bodies[-1]
        assert "content_parts" not in sent and sent["token_ids"] == req.token_ids
        assert sent["features"] == {
            "mm_hashes": {"image": ["k-a", "k-b"]},
            "mm_placeholders": {"image": [{"offset": 1, "length": 3}, {"offset": 4, "length": 2}]},
            "kwargs_data": {"image": ["DATA-a", "DATA-b"] if turn == 0 else [None, None]}}  # then held
        # the gateway placed the images: vLLM is not asked to echo the prompt (the scripted engine's
        # echo, [1, 2, 3], is not taken), and the first delta carries the request's own ids and placements
        assert sent["return_token_ids"] is False
        assert deltas[0].prompt_token_ids == req.token_ids and deltas[0].image_tokens == 5
        assert all(d.prompt_token_ids is None and d.image_tokens is None for d in deltas[1:])
        # streamed to a client that does not read the usage, the gateway counts it (vLLM sends no usage
        # chunk); otherwise vLLM's count comes, with the prompt tokens its prefix cache held
        own = stream and not usage_read
        assert sent["stream_options"] == {"include_usage": not own}
        usage = [(d.prompt_tokens, d.completion_tokens, d.cached_tokens) for d in deltas if d.prompt_tokens is not None]
        assert usage == [(len(req.token_ids), 2, None) if own else (3, 2, 2)]
    await engine.close()


async def test_an_image_the_server_holds_goes_by_key_alone(served) -> None:
    fake, url, session = served
    engine = await pool(url, session)
    before = inputs("key", url), inputs("data", url)
    for req in (request(image("a")), request(image("a"), image("b")), request(image("b"), image("a"))):
        assert [d async for d in engine.generate(req)]
    assert [b["features"]["kwargs_data"]["image"] for b in fake.bodies] == [
        ["DATA-a"], [None, "DATA-b"], [None, None]]
    assert (inputs("key", url) - before[0], inputs("data", url) - before[1]) == (3, 2)
    assert fake.misses == 0
    await engine.close()


async def test_an_image_repeated_in_one_request_is_sent_once(served) -> None:
    """A conversation resends its image every turn: its data travels once, later copies by key."""
    fake, url, session = served
    engine = await pool(url, session)
    assert [d async for d in engine.generate(request(image("a"), image("a"), image("a")))]
    assert fake.bodies[-1]["features"]["kwargs_data"]["image"] == ["DATA-a", None, None]
    await engine.close()


@pytest.mark.parametrize("stream", [True, False])
async def test_an_engine_that_dropped_an_image_is_sent_its_data_again(served, stream) -> None:
    """A restarted engine (or one whose cache evicted the image) answers a key alone with a 500 before any
    output: the request is sent again with the data, once, and the client sees nothing of it."""
    fake, url, session = served
    engine = await pool(url, session)
    assert [d async for d in engine.generate(request(image("a"), stream=stream))]
    fake.cache.clear()  # the engine restarted
    resent = inputs("resent", url)
    deltas = [d async for d in engine.generate(request(image("a"), image("b"), stream=stream))]
    assert [d.text for d in deltas if d.text] == (["Hel", "lo"] if stream else ["Hello"])
    assert fake.misses == 1 and inputs("resent", url) - resent == 1
    assert [b["features"]["kwargs_data"]["image"] for b in fake.bodies[-2:]] == [[None, "DATA-b"],
                                                                                  ["DATA-a", "DATA-b"]]
    await engine.close()


async def test_a_500_with_every_image_sent_is_retried_once(served) -> None:
    """vLLM's frontend may have sent an image by key to an engine that never got it (it keeps the images of
    a request it then refused): a 500 before any output is tried once more, and only once."""
    fake, url, session = served
    engine = await pool(url, session)
    fake.mode, fake.status, fake.message = "bad", 500, "Internal server error"
    with pytest.raises(EngineCrashed):
        [d async for d in engine.generate(request(image("a")))]
    assert len(fake.bodies) == 2
    await engine.close()


async def test_without_the_engine_image_cache_every_image_is_sent_with_data(served) -> None:
    fake, url, session = served
    engine = await pool(url, session, image_cache=False)
    for _ in range(2):
        assert [d async for d in engine.generate(request(image("a"), image("a")))]
    assert [b["features"]["kwargs_data"]["image"] for b in fake.bodies] == [["DATA-a", None]] * 2
    await engine.close()


async def test_requests_without_features_still_send_images(served) -> None:
    fake, url, session = served
    engine = await pool(url, session)
    req = request(image("a"))
    req.features = None
    assert [d async for d in engine.generate(req)]
    assert "features" not in fake.bodies[-1] and fake.bodies[-1]["content_parts"]
    await engine.close()


def keyed(*names: str) -> EngineRequest:
    """A request whose images go as images, each known by its bytes' hash."""
    return EngineRequest("r", [1, 9, 2], [f"data:image/png;base64,{n}" for n in names], SamplingParams(max_tokens=2),
                         image_keys=[ImageKey(f"sha-{n}", 64 * 48) for n in names])


def sent_parts(body: dict) -> list[tuple[str | None, str]]:
    return [(part["url"], part["uuid"]) for part in body["content_parts"]]


async def test_images_go_with_their_key_and_by_key_alone_once_the_server_holds_them(served) -> None:
    fake, url, session = served
    engine = await pool(url, session)
    before = inputs("key", url), inputs("data", url)
    for req in (keyed("A"), keyed("A", "B"), keyed("B", "A")):
        assert [d async for d in engine.generate(req)]
    assert [sent_parts(b) for b in fake.bodies] == [
        [("data:image/png;base64,A", "vlmgw-img-sha-A")],
        [(None, "vlmgw-img-sha-A"), ("data:image/png;base64,B", "vlmgw-img-sha-B")],
        [(None, "vlmgw-img-sha-B"), (None, "vlmgw-img-sha-A")]]
    assert (inputs("key", url) - before[0], inputs("data", url) - before[1]) == (3, 2)
    assert fake.misses == 0
    await engine.close()


async def test_an_image_repeated_in_one_request_carries_its_data_each_time_until_held(served) -> None:
    fake, url, session = served
    engine = await pool(url, session)
    for _ in range(2):
        assert [d async for d in engine.generate(keyed("A", "A"))]
    assert [sent_parts(b) for b in fake.bodies] == [[("data:image/png;base64,A", "vlmgw-img-sha-A")] * 2,
                                                    [(None, "vlmgw-img-sha-A")] * 2]
    assert fake.misses == 0
    await engine.close()


@pytest.mark.parametrize("stream", [True, False])
async def test_a_server_that_dropped_an_image_is_sent_it_again(served, stream) -> None:
    fake, url, session = served
    engine = await pool(url, session)
    assert [d async for d in engine.generate(keyed("A"))]
    fake.cache.clear()  # the server restarted
    resent = inputs("resent", url)
    req = keyed("A", "B")
    req.stream = stream
    deltas = [d async for d in engine.generate(req)]
    assert [d.text for d in deltas if d.text] == (["Hel", "lo"] if stream else ["Hello"])
    assert fake.misses == 1 and inputs("resent", url) - resent == 1
    assert [sent_parts(b) for b in fake.bodies[-2:]] == [
        [(None, "vlmgw-img-sha-A"), ("data:image/png;base64,B", "vlmgw-img-sha-B")],
        [("data:image/png;base64,A", "vlmgw-img-sha-A"), ("data:image/png;base64,B", "vlmgw-img-sha-B")]]
    await engine.close()


async def test_a_cache_miss_with_every_image_sent_is_the_engines_failure(served) -> None:
    """Never the client's 400: an engine that misses what it was just sent fails (a 502 to the client)."""
    fake, url, session = served
    engine = await pool(url, session)
    fake.mode, fake.status, fake.message = "bad", 400, "Cache miss for image at index 0 but data is not provided."
    with pytest.raises(EngineCacheMiss):
        [d async for d in engine.generate(keyed("A"))]
    assert len(fake.bodies) == 1
    await engine.close()
