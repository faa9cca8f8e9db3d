"""The loader's public API: order, limits, parameters, TLS through the guard, address fallback."""

from __future__ import annotations

import datetime
import ssl

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from tests.gateway.images import imagedata as img
from tests.gateway.images.conftest import FakeResolver, ImageServer, _app
from vlm_gateway.errors import ImageError
from vlm_gateway.images.guard import VettedTarget, _open
from vlm_gateway.images.load import DetailRule, ImageLoader, ImageSource, LoadedImage
from vlm_gateway.settings import ImageSettings


async def test_data_uris_load_in_order(session):
    loader = ImageLoader(ImageSettings(), session)
    big = img.data_uri(img.encode("JPEG", (1000, 600)), "image/jpeg")
    small = img.data_uri(img.encode("PNG", (100, 60)))
    out = await loader.load([ImageSource(big, "low"), ImageSource(small), ImageSource(big)], DetailRule())
    assert [type(x) for x in out] == [LoadedImage] * 3
    assert [(o.width, o.height, o.format) for o in out] == [(512, 307, "png"), (100, 60, "png"), (1000, 600, "jpeg")]
    assert await loader.load([], DetailRule()) == []


async def test_a_resent_data_uri_is_neither_decoded_nor_hashed_again(session, monkeypatch):
    from vlm_gateway.images import load

    decoded = []
    real = load._decode_uri
    monkeypatch.setattr(load, "_decode_uri", lambda *a: decoded.append(a[0]) or real(*a))
    loader = ImageLoader(ImageSettings(), session)
    uri = img.data_uri(img.encode("PNG", (100, 60)))
    first = await loader.load([ImageSource(uri)], DetailRule())
    assert await loader.load([ImageSource(uri)], DetailRule()) == first  # the same image, known by its text
    await loader.load([ImageSource(uri, "low")], DetailRule(low_max_side=50))  # another sizing: decoded again
    assert decoded == [uri, uri]
    assert loader.stats()["known_data_uris"] == 1


async def test_bad_image_names_its_part(session):
    loader = ImageLoader(ImageSettings(), session)
    sources = [ImageSource(img.data_uri(img.encode("PNG")), param="messages[0].content[0].image_url"),
               ImageSource("data:image/png;base64,AAAA", param="messages[0].content[1].image_url")]
    with pytest.raises(ImageError) as info:
        await loader.load(sources, DetailRule())
    assert info.value.param == "messages[0].content[1].image_url" and info.value.status == 400


@pytest.mark.parametrize("url", ["ftp://x/y.png", "file:///etc/passwd", "x.png", "", "javascript:alert(1)",
                                 "http://" + "a" * 9000 + ".test/"])
async def test_unsupported_urls(session, url):
    with pytest.raises(ImageError) as info:
        await ImageLoader(ImageSettings(), session).load([ImageSource(url, param="p")], DetailRule())
    assert info.value.code == "invalid_image_url" and info.value.param == "p"


async def test_data_uri_size_limit(session):
    loader = ImageLoader(ImageSettings(max_image_bytes=100), session)
    with pytest.raises(ImageError) as info:
        await loader.load([ImageSource(img.data_uri(img.noise("PNG")), param="p")], DetailRule())
    assert info.value.code == "image_too_large"


class RecordingSession:
    """Stands in for aiohttp.ClientSession: records requests, refuses the first address."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    async def request(self, method, url, **kwargs):
        self.calls.append((str(url), kwargs))
        if len(self.calls) == 1:
            raise aiohttp.ClientConnectorError(None, OSError(111, "refused"))  # type: ignore[arg-type]
        return "response"


async def test_open_tries_only_vetted_addresses_in_order():
    target = VettedTarget("https://img.test:8443/a.png?x=1", "https", "img.test", 8443, ("203.0.113.5", "2001:db8::5"))
    fake = RecordingSession()
    assert await _open(fake, "GET", target, {"Accept": "image/*"}, None, None) == "response"  # type: ignore[arg-type]
    assert [url for url, _ in fake.calls] == ["https://203.0.113.5:8443/a.png?x=1", "https://[2001:db8::5]:8443/a.png?x=1"]
    for _, kwargs in fake.calls:
        assert kwargs["headers"]["Host"] == "img.test:8443" and kwargs["server_hostname"] == "img.test"
        assert kwargs["allow_redirects"] is False


# --- TLS: the connection goes to the IP, the certificate is checked against the name ---------------

def _self_signed(name: str) -> tuple[bytes, bytes]:
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@pytest_asyncio.fixture
async def tls(tmp_path):
    cert, key = _self_signed("images.test")
    (tmp_path / "c.pem").write_bytes(cert)
    (tmp_path / "k.pem").write_bytes(key)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    runner = web.AppRunner(_app(ImageServer()), shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client_ctx = ssl.create_default_context(cadata=cert.decode())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ctx)) as session:
        yield session, port
    await runner.cleanup()


async def test_tls_is_verified_against_the_hostname_not_the_ip(tls):
    session, port = tls
    resolver = FakeResolver({"images.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    loader = ImageLoader(ImageSettings(allow_loopback=True), session, resolver=resolver)
    out = await loader.load([ImageSource(f"https://images.test:{port}/files/ok.png")], DetailRule())
    assert out[0].width == 64
    with pytest.raises(ImageError) as info:  # same server, a name its certificate does not carry
        await loader.load([ImageSource(f"https://other.test:{port}/files/ok.png", param="p")], DetailRule())
    assert info.value.code == "image_fetch_failed" and "Certificate" in info.value.message
    with pytest.raises(ImageError) as info:  # the IP itself is not in the certificate either
        await loader.load([ImageSource(f"https://127.0.0.1:{port}/files/ok.png?k=ip", param="p")], DetailRule())
    assert "Certificate" in info.value.message
