"""The SSRF guard: the corpus of disguised internal addresses, DNS answers, redirects, host lists.

Proof that nothing is contacted: the ``connections`` fixture records every ``socket.connect`` (and
refuses anything off-host); refused URLs must leave it empty, and IP literals must never reach the
resolver.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.gateway.images.conftest import FakeResolver
from vlm_gateway.errors import ImageError, InvalidRequest
from vlm_gateway.images.addresses import blocked_reason, parse_host_ip
from vlm_gateway.images.guard import guarded_request, system_resolver, vet_url
from vlm_gateway.images.load import DetailRule, ImageLoader, ImageSource
from vlm_gateway.settings import ImageSettings

PARAM = "messages[0].content[1].image_url"
DNS = {
    "metadata.test": ["169.254.169.254"],
    "internal.test": ["10.0.0.1"],
    "mixed.test": ["93.184.216.34", "10.0.0.1"],
    "v6loop.test": ["::1"],
    "mapped.test": ["::ffff:10.0.0.1"],
    "nat64.test": ["64:ff9b::a9fe:a9fe"],
    "sixtofour.test": ["2002:c0a8:101::1"],
    "localhost": ["127.0.0.1", "::1"],
    "cgnat.test": ["100.64.1.1"],
    "scoped.test": ["fe80::1%2"],
    "public.test": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"],
}

LITERALS = [
    "http://2130706433/", "http://0177.0.0.1/", "http://0x7f.0.0.1/", "http://0x7f000001/", "http://127.1/",
    "http://017700000001/", "http://127.0.0.1:80/", "http://127.255.255.254/", "https://127.0.0.1/",
    "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://[::ffff:7f00:1]/", "http://[0:0:0:0:0:ffff:127.0.0.1]/",
    "http://0.0.0.0/", "http://0/", "http://[::]/", "http://[::127.0.0.1]/",
    "http://169.254.169.254/latest/meta-data/", "http://0xa9fea9fe/", "http://2852039166/", "http://[fe80::1]/",
    "http://[fe80::1%25eth0]/", "http://[fd00:ec2::254]/", "http://[fc00::1]/", "http://[fec0::1]/",
    "http://10.0.0.1/", "http://012.0.0.1/", "http://192.168.1.1/", "http://172.16.0.1/", "http://100.64.0.1/",
    "http://224.0.0.1/", "http://[ff02::1]/", "http://255.255.255.255/", "http://240.0.0.1/", "http://198.18.0.1/",
    "http://[64:ff9b::a9fe:a9fe]/", "http://[64:ff9b::169.254.169.254]/", "http://[64:ff9b::7f00:1]/",
    "http://[64:ff9b::10.0.0.1]/", "http://[64:ff9b:1::a00:1]/", "http://[2002:7f00:1::]/",
    "http://[2002:a9fe:a9fe::1]/", "http://[2001:db8::1]/", "http://[::ffff:169.254.169.254]/",
    "http://192.0.0.192/latest/meta-data/", "http://192.0.0.8/", "http://[::ffff:192.0.0.192]/",
    "http://[64:ff9b::c000:c0]/", "http://[3fff::1]/", "http://[5f00::1]/", "http://192.88.99.1/",
]
NAMES = [f"http://{host}/x.png" for host in DNS if host != "public.test"]
INVALID = [
    "http://1.2.3.4.5/", "http://256.0.0.1/", "http://0x100000000/", "http://09.0.0.1/", "http://1.0x.0.0x1g/",
    "file:///etc/passwd", "ftp://example.com/x.png", "gopher://127.0.0.1:6379/_INFO", "dict://127.0.0.1:11211/",
    "http://user:pass@public.test/", "http://public.test@127.0.0.1/", "http:///x", "http://exa mple.com/",
    "https://public.test:0/", "http://public.test:99999/", "http://nxdomain.test/", "//public.test/x",
    "http://[::1/", "http://[1::2::3]/",
]


@pytest.fixture
def strict() -> ImageSettings:
    return ImageSettings()  # the production defaults: no loopback


@pytest.fixture
def dns() -> FakeResolver:
    return FakeResolver(DNS)


@pytest.mark.parametrize("url", LITERALS + NAMES + INVALID)
async def test_corpus_is_refused_without_any_connection(url, strict, session, dns, connections):
    loader = ImageLoader(strict, session, resolver=dns)
    with pytest.raises(ImageError) as info:
        await loader.load([ImageSource(url, param=PARAM)], DetailRule())
    assert info.value.param == PARAM and info.value.status == 400
    assert info.value.code in ("url_not_allowed", "invalid_url", "invalid_image_url"), info.value.message
    assert connections == []
    if url in LITERALS:
        assert dns.calls == []  # IP literals in any spelling never reach a resolver
    assert "10.0.0.1" not in info.value.message or "10.0.0.1" in url  # answers are not revealed


@pytest.mark.parametrize("url", LITERALS + NAMES)
async def test_vet_url_refuses_the_corpus(url, strict, dns):
    with pytest.raises(InvalidRequest) as info:
        await vet_url(url, strict, dns, param="callback_url")
    assert info.value.code == "url_not_allowed" and info.value.param == "callback_url"


async def test_public_targets_pass_with_their_addresses(strict, dns, connections):
    target = await vet_url("https://Public.Test./a/b?c=d#frag", strict, dns)
    assert target.host == "public.test" and target.port == 443 and target.scheme == "https"
    assert target.addresses == ("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946")
    assert target.host_header == "public.test"
    assert str(target.connect_url("93.184.216.34")) == "https://93.184.216.34/a/b?c=d"
    assert str(target.connect_url("2606:2800:220:1:248:1893:25c8:1946")).startswith("https://[2606:")
    literal = await vet_url("http://0x5db8d822:8080/", strict, dns)  # 93.184.216.34, spelled in hex
    assert literal.addresses == ("93.184.216.34",) and literal.host_header == "93.184.216.34:8080"
    assert dns.calls == [("public.test", 443)]
    assert connections == []


async def test_nat64_of_a_public_address_is_allowed(strict, dns):
    target = await vet_url("http://[64:ff9b::5db8:d822]/", strict, dns)
    assert target.host_header == "[64:ff9b::5db8:d822]"


async def test_allow_loopback_opens_loopback_only(dns):
    settings = ImageSettings(allow_loopback=True)
    for url in ("http://127.0.0.1/", "http://[::1]/", "http://0x7f.1/", "http://[::ffff:127.0.0.1]/", "http://localhost/"):
        await vet_url(url, settings, dns)
    for url in ("http://0.0.0.0/", "http://[64:ff9b::7f00:1]/", "http://[2002:7f00:1::]/", "http://10.0.0.1/"):
        with pytest.raises(InvalidRequest):
            await vet_url(url, settings, dns)


async def test_deny_and_allow_lists(dns):
    deny = ImageSettings(deny_hosts=["public.test", "*.cdn.test", "93.184.216.0/24"])
    for url in ("http://public.test/", "http://a.public.test/", "http://x.cdn.test/", "http://93.184.216.9/"):
        with pytest.raises(InvalidRequest) as info:
            await vet_url(url, deny, FakeResolver({"a.public.test": ["8.8.8.8"], "x.cdn.test": ["8.8.8.8"]}))
        assert "deny list" in info.value.message
    assert dns.calls == []
    await vet_url("http://cdn.test/", deny, FakeResolver({"cdn.test": ["8.8.8.8"]}))  # *. is subdomains only

    allow = ImageSettings(allow_hosts=["images.test"])
    await vet_url("http://img.images.test/", allow, FakeResolver({"img.images.test": ["8.8.8.8"]}))
    with pytest.raises(InvalidRequest) as info:
        await vet_url("http://public.test/", allow, dns)
    assert "allow list" in info.value.message and dns.calls == []  # refused before any lookup

    by_net = ImageSettings(allow_hosts=["93.184.216.0/24"])
    await vet_url("http://public.test/", ImageSettings(allow_hosts=["93.184.216.0/24", "2606:2800::/32"]), dns)
    with pytest.raises(InvalidRequest):
        await vet_url("http://public.test/", by_net, dns)  # its IPv6 answer is outside the allowed networks
    with pytest.raises(InvalidRequest):  # an allow list never opens a private address
        await vet_url("http://10.0.0.1/", ImageSettings(allow_hosts=["10.0.0.0/8"]), dns)


async def test_resolver_failure_is_a_refusal(strict):
    async def broken(host, port):
        raise OSError("resolver down")

    async def garbage(host, port):
        return ["not-an-ip"]

    for resolver in (broken, garbage, FakeResolver({"empty.test": []})):
        with pytest.raises(InvalidRequest) as info:
            await vet_url("http://empty.test/", strict, resolver)
        assert info.value.code == "invalid_url"


@pytest.mark.parametrize(
    "target",
    ["http://10.0.0.1/x.png", "http://169.254.169.254/latest/meta-data/", "http://internal.test/x.png",
     "http://[::ffff:10.0.0.1]/", "http://0.0.0.0/", "http://metadata.test/", "file:///etc/passwd",
     "http://[64:ff9b::a9fe:a9fe]/"],
)
async def test_redirect_to_a_private_address_is_refused(target, settings, session, dns, image_server, connections):
    loader = ImageLoader(settings, session, resolver=dns)  # loopback allowed: the server is reachable
    url = image_server.url("/redirect?to=" + target.replace("%", "%25").replace("&", "%26"))
    with pytest.raises(ImageError) as info:
        await loader.load([ImageSource(url, param=PARAM)], DetailRule())
    assert info.value.code in ("url_not_allowed", "invalid_url"), info.value.message
    assert connections and not connections.non_loopback()  # only the local server was contacted


async def test_loopback_is_refused_by_default(strict, session, image_server, connections):
    loader = ImageLoader(strict, session)
    with pytest.raises(ImageError) as info:
        await loader.load([ImageSource(image_server.url("/files/ok.png"), param=PARAM)], DetailRule())
    assert info.value.code == "url_not_allowed" and connections == []


async def test_guarded_request_post_and_redirect_methods(settings, session, image_server):
    async with guarded_request(session, "POST", image_server.url("/echo"), settings, data=b"hi") as got:
        assert got.redirects == 0 and await got.response.json() == {"method": "POST", "body": "hi"}
    async with guarded_request(session, "POST", image_server.url("/see-other"), settings, data=b"x") as got:
        assert got.redirects == 1 and await got.response.json() == {"method": "GET", "body": ""}
    async with guarded_request(session, "POST", image_server.url("/temporary"), settings, data=b"x") as got:
        assert await got.response.json() == {"method": "POST", "body": "x"}
        assert got.target.url == image_server.url("/echo")


async def test_guarded_request_uses_the_vetted_address_and_keeps_the_host(settings, session, image_server):
    resolver = FakeResolver({"hooks.test": [["127.0.0.1"], ["169.254.169.254"]]})
    url = f"http://hooks.test:{image_server.port}/files/ok.png"
    for _ in range(2):  # a second lookup would answer the metadata address
        resolver.calls.clear()
        async with guarded_request(session, "GET", url, settings, resolver) as got:
            assert got.response.status == 200
        assert len(resolver.calls) == 1
        assert image_server.hosts[-1] == f"hooks.test:{image_server.port}"
        resolver = FakeResolver({"hooks.test": [["127.0.0.1"], ["169.254.169.254"]]})


async def test_system_resolver_handles_literals_without_dns():
    assert await system_resolver("127.0.0.1", 80) == ["127.0.0.1"]


@pytest.mark.parametrize("address", ["192.0.0.192", "192.0.0.8", "198.51.100.7", "3fff::1", "100::1"])
def test_special_purpose_blocks_are_refused_whatever_the_interpreter_says(address, monkeypatch):
    """Pythons before 3.11.10 / 3.12.4 call 192.0.0.0/24 global (CVE-2024-4032); the guard's own table of
    IANA's special-purpose blocks refuses them even where ``ipaddress`` says public."""
    import ipaddress

    for cls in (ipaddress.IPv4Address, ipaddress.IPv6Address):
        for flag in ("is_global", "is_private", "is_reserved", "is_link_local", "is_multicast", "is_unspecified",
                     "is_site_local"):
            if hasattr(cls, flag):
                monkeypatch.setattr(cls, flag, property(lambda self, f=flag: f == "is_global"))
    assert blocked_reason(ipaddress.ip_address(address)) is not None
    assert blocked_reason(ipaddress.ip_address("93.184.216.34")) is None


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_every_ipv4_spelling_means_the_same_address(value):
    from ipaddress import IPv4Address

    ip = IPv4Address(value)
    a, b, c, d = ip.packed
    for spelling in (str(value), hex(value), "0" + oct(value)[2:], f"{a}.{b}.{c}.{d}",
                     f"0x{a:x}.0x{b:x}.0x{c:x}.0x{d:x}", f"0{a:o}.0{b:o}.0{c:o}.0{d:o}",
                     f"{a}.{b}.{(c << 8) | d}", f"{a}.{(b << 16) | (c << 8) | d}"):
        assert parse_host_ip(spelling) == ip, spelling
    mapped = parse_host_ip(f"[::ffff:{ip}]")
    assert (blocked_reason(mapped) is None) == (blocked_reason(ip) is None)


async def test_unanswered_lookups_do_not_starve_the_default_threads(monkeypatch):
    """Lookups of names whose nameserver never answers hold their threads past the fetch's limit; they run
    in threads of their own, so image decoding and tokenizing (the loop's default threads) go on."""
    import asyncio
    import socket
    import threading

    answer = threading.Event()
    real = socket.getaddrinfo

    def stuck(host, *args, **kwargs):
        if str(host).endswith(".stuck.test"):
            answer.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "no answer")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", stuck)
    lookups = [asyncio.ensure_future(system_resolver(f"a{i}.stuck.test", 80)) for i in range(40)]
    try:
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "decoded"), 10) == "decoded"
    finally:
        answer.set()
        await asyncio.gather(*lookups, return_exceptions=True)
