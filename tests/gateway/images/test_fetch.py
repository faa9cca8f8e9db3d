"""Fetching over http from a local server: limits, lies, redirects, caching, single-flight."""

from __future__ import annotations

import asyncio
import base64
import time

import pytest

from tests.gateway.images import imagedata as img
from tests.gateway.images.conftest import FILES, HUGE, PNG, FakeRedis, FakeResolver
from vlm_gateway.errors import ImageError
from vlm_gateway.images.load import DetailRule, ImageLoader, ImageSource, LoadedImage
from vlm_gateway.settings import ImageSettings

PARAM = "messages[0].content[1].image_url"
RULE = DetailRule()


async def load_one(loader: ImageLoader, url: str, detail="auto") -> LoadedImage:
    (out,) = await loader.load([ImageSource(url, detail, PARAM)], RULE)
    return out


async def refused(loader: ImageLoader, url: str, code: str | None = None) -> ImageError:
    with pytest.raises(ImageError) as info:
        await load_one(loader, url)
    assert info.value.param == PARAM
    assert info.value.status == 400
    if code:
        assert info.value.code == code, info.value.message
    return info.value


async def test_fetches_and_passes_bytes_through(loader, image_server):
    out = await load_one(loader, image_server.url("/files/ok.png"))
    assert (out.width, out.height, out.format) == (64, 48, "png")
    assert out.url.startswith("data:image/png;base64,")
    assert base64.b64decode(out.url.split(",", 1)[1]) == PNG


async def test_format_comes_from_the_bytes_not_the_name_or_type(loader, image_server):
    out = await load_one(loader, image_server.url("/files/liar.jpg"))
    assert out.format == "png" and out.url.startswith("data:image/png;")


async def test_resizes_fetched_jpeg_for_low_detail(loader, image_server):
    out = await load_one(loader, image_server.url("/files/photo.jpg"), "low")
    assert (out.width, out.height, out.format) == (512, 384, "png")


@pytest.mark.parametrize(
    "path, code",
    [
        ("/files/page.png", "invalid_image_format"),  # HTML labelled image/png
        ("/files/icon.ico", "invalid_image_format"),  # a real image, not an allowed format
        ("/files/truncated.png", "invalid_image"),
        ("/files/bomb.png", "image_too_large"),  # 64 MP > max_pixels, refused from the header
        ("/files/bomb.gif", "image_too_large"),  # 4.3 GP: Pillow's own DecompressionBombError
        ("/files/missing.png", "image_fetch_failed"),
        ("/status/500", "image_fetch_failed"),
        ("/status/204", "image_fetch_failed"),
    ],
)
async def test_bad_images_are_400s_naming_the_part(loader, image_server, path, code):
    await refused(loader, image_server.url(path), code)


@pytest.fixture
def timed_loader(session) -> ImageLoader:
    return ImageLoader(ImageSettings(allow_loopback=True), session)  # the default 1.5 s limit


async def test_slow_server_times_out(timed_loader, image_server):
    start = time.monotonic()
    err = await refused(timed_loader, image_server.url("/slow"), "image_fetch_timeout")
    assert 1.5 <= time.monotonic() - start < 30  # the server would answer after 60 s
    assert "1.5s" in err.message


async def test_trickling_body_times_out_too(timed_loader, image_server):
    start = time.monotonic()  # headers at once, then one byte every 0.1 s: the limit covers the body
    await refused(timed_loader, image_server.url("/trickle"), "image_fetch_timeout")
    assert time.monotonic() - start < 30  # the whole body would take over a minute


async def test_declared_length_over_cap_is_refused_before_reading(loader, image_server):
    err = await refused(loader, image_server.url("/huge?declared=1"), "image_too_large")
    assert str(HUGE) in err.message
    await asyncio.sleep(0.05)
    assert image_server.sent["/huge"] < HUGE


async def test_streamed_body_is_cut_at_the_cap(loader, image_server, settings):
    await refused(loader, image_server.url("/huge"), "image_too_large")
    await asyncio.sleep(0.2)
    assert image_server.sent["/huge"] < HUGE  # the download stopped: the server could not send it all


async def test_body_until_close_is_cut_at_the_cap(loader, image_server):
    await refused(loader, image_server.raw_url("/until-close"), "image_too_large")


async def test_short_content_length_reads_only_what_was_declared(loader, image_server):
    # 1000 declared, a whole image sent: the client reads 1000 bytes (a truncated image) or rejects the
    # bytes after them as a malformed response; either way a 400, never more than declared
    err = await refused(loader, image_server.raw_url("/short-declared"))
    assert err.code in ("invalid_image", "image_fetch_failed")
    assert "\\x" not in err.message and len(err.message) < 200  # no response bytes in the message


async def test_long_content_length_then_hang_up(loader, image_server):
    await refused(loader, image_server.raw_url("/long-declared"), "image_fetch_failed")


async def test_redirects_are_followed_up_to_the_limit(loader, image_server):
    out = await load_one(loader, image_server.url("/redirect?hops=2"))  # 3 redirects in all
    assert out.width == 64
    await refused(loader, image_server.url("/redirect?hops=3"), "too_many_redirects")  # 4


async def test_connection_refused_is_a_400(loader):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    await refused(loader, f"http://127.0.0.1:{port}/x.png", "image_fetch_failed")


async def test_one_download_for_twenty_concurrent_requests(settings, session, image_server):
    loader = ImageLoader(settings, session)
    url = image_server.url("/files/ok.png?delay=0.2&k=single-flight")
    path = "/files/ok.png"
    before = image_server.hits[path]
    results = await asyncio.gather(*(load_one(loader, url) for _ in range(20)))
    assert image_server.hits[path] - before == 1
    assert len({r.sha256 for r in results}) == 1
    stats = loader.stats()
    assert stats["downloads"] == 1 and stats["shared_fetches"] == 19
    await load_one(loader, url)  # then from the memory cache
    assert image_server.hits[path] - before == 1
    assert loader.stats()["memory_hits"] == 1


async def test_same_url_twice_in_one_request_is_one_download(settings, session, image_server):
    loader = ImageLoader(settings, session)
    url = image_server.url("/files/ok.png?k=twice")
    before = image_server.hits["/files/ok.png"]
    out = await loader.load([ImageSource(url), ImageSource(url, "low")], RULE)
    assert len(out) == 2 and image_server.hits["/files/ok.png"] - before == 1


async def test_redis_shares_bytes_between_loaders(settings, session, image_server):
    redis = FakeRedis()
    url = image_server.url("/files/ok.png?k=redis")
    before = image_server.hits["/files/ok.png"]
    first = ImageLoader(settings, session, redis=redis)
    await load_one(first, url)
    await first._fetcher.drain()
    assert list(redis.ttls.values()) == [settings.cache_ttl_s]
    second = ImageLoader(settings, session, redis=redis)  # another replica
    await load_one(second, url)
    assert image_server.hits["/files/ok.png"] - before == 1
    assert second.stats()["redis_hits"] == 1 and second.stats().get("downloads", 0) == 0


async def test_redis_failure_is_only_a_miss(settings, session, image_server):
    loader = ImageLoader(settings, session, redis=FakeRedis(fail=True))
    out = await load_one(loader, image_server.url("/files/ok.png?k=redis-down"))
    await loader._fetcher.drain()
    assert out.width == 64 and loader.stats()["redis_errors"] == 2


async def test_failed_download_is_not_cached(settings, session, image_server):
    loader = ImageLoader(settings, session)
    url = image_server.url("/files/missing.png")
    for _ in range(2):
        await refused(loader, url, "image_fetch_failed")
    assert loader.stats()["downloads"] == 2


async def test_errors_in_shared_download_name_each_callers_part(settings, session, image_server):
    loader = ImageLoader(settings, session)
    url = image_server.url("/files/page.png?delay=0.1")
    got = await asyncio.gather(
        *(loader.load([ImageSource(url, param=f"messages[{i}].content[0].image_url")], RULE) for i in range(3)),
        return_exceptions=True,
    )
    assert [e.param for e in got] == [f"messages[{i}].content[0].image_url" for i in range(3)]


async def test_hostname_goes_through_the_injected_resolver_once(settings, session, image_server):
    resolver = FakeResolver({"images.test": [["127.0.0.1"], ["10.0.0.1"]]})  # rebinding after 1st answer
    loader = ImageLoader(settings, session, resolver=resolver)
    out = await load_one(loader, f"http://images.test:{image_server.port}/files/ok.png")
    assert out.width == 64
    assert resolver.calls == [("images.test", image_server.port)]
    assert image_server.hosts[-1] == f"images.test:{image_server.port}"  # Host header kept


async def test_first_failure_cancels_the_rest(loader, image_server):
    start = time.monotonic()
    with pytest.raises(ImageError) as info:
        await loader.load(
            [ImageSource(image_server.url("/slow"), param="a"), ImageSource("data:,nope", param="b")], RULE
        )
    assert info.value.param == "b" and time.monotonic() - start < 30  # /slow answers after 60 s


async def test_fetched_images_count_against_max_image_bytes(session, image_server):
    loader = ImageLoader(ImageSettings(allow_loopback=True, max_image_bytes=1000), session)
    await refused(loader, image_server.url("/files/photo.jpg"), "image_too_large")


def test_test_files_are_what_they_claim():
    assert len(FILES["bomb.png"][0]) < 1_000_000
    assert img.encode("PNG") == PNG
