"""The SSRF guard: the one way the gateway fetches a URL it was given (images now, webhooks later).

* only ``http``/``https``, no credentials in the URL;
* the host is resolved ONCE (through an injectable async resolver) and every answer is vetted
  (:func:`vlm_gateway.images.addresses.blocked_reason`); one bad answer refuses the URL;
* the connection goes to a vetted address: the request URL carries the IP, with the ``Host`` header and
  (for TLS) ``server_hostname`` set to the real name, so aiohttp does no second lookup (no DNS rebinding);
* redirects are followed by hand, at most ``max_redirects``, each target vetted again;
* ``allow_hosts``/``deny_hosts`` entries are names (matching the name and its subdomains; ``*.x`` only
  subdomains) or IP networks (``10.0.0.0/8``, matched against the resolved addresses). ``allow_hosts``
  only narrows what is reachable: it never opens a private address;
* loopback only with ``allow_loopback``.

Refusals raise :class:`vlm_gateway.errors.InvalidRequest` (code ``url_not_allowed``/``invalid_url``); the
message never names the resolved address (no probing of internal DNS through error messages).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from ipaddress import ip_address
from typing import Any, Protocol

import aiohttp
import msgspec
from yarl import URL

from vlm_gateway.errors import InvalidRequest
from vlm_gateway.images.addresses import HostSyntaxError, IPAddress, blocked_reason, parse_host_ip, parse_network
from vlm_gateway.images.datauri import describe_url

log = logging.getLogger("vlm_gateway.guard")

#: ``async def resolver(host, port) -> ["203.0.113.7", ...]``
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
REDIRECTS = frozenset({301, 302, 303, 307, 308})
_HOST_CHARS = re.compile(r"[a-z0-9_.-]+")


class GuardPolicy(Protocol):
    """The settings the guard reads (``ImageSettings`` has them all)."""

    allow_loopback: bool
    allow_hosts: list[str]
    deny_hosts: list[str]
    max_redirects: int


class VettedTarget(msgspec.Struct, frozen=True):
    """A URL whose addresses passed the guard: connect only to ``addresses``."""

    url: str  # the URL as requested (fragment dropped)
    scheme: str
    host: str  # lower-case, IDNA-encoded, no brackets, no trailing dot
    port: int
    addresses: tuple[str, ...]
    host_is_ip: bool = False

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    def connect_url(self, address: str) -> URL:
        """The request URL with the host replaced by ``address``."""
        return URL(self.url).with_host(address)


class GuardedResponse(msgspec.Struct):
    """The final (non-redirect) response of :func:`guarded_request`, with where it came from."""

    response: aiohttp.ClientResponse
    target: VettedTarget
    redirects: int


# Lookups of names a client chose run in threads of their own: a name whose nameserver never answers
# holds its thread for the resolver's own timeout (5 s a try), past the fetch's time limit, and in the
# loop's default executor such lookups would starve image decoding and tokenizing for everyone.
_DNS_THREADS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="vlm-dns")


async def system_resolver(host: str, port: int) -> list[str]:
    """The default resolver: ``getaddrinfo`` in the DNS threads (TCP answers, de-duplicated, in order)."""
    infos = await asyncio.get_running_loop().run_in_executor(
        _DNS_THREADS, functools.partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM))
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _refuse(url: str, why: str, param: str | None, code: str = "url_not_allowed") -> InvalidRequest:
    return InvalidRequest(f"URL {describe_url(url)!r} is not allowed: {why}", param=param, code=code)


def _name_matches(host: str, pattern: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    pattern = pattern.lstrip(".")
    return host == pattern or host.endswith("." + pattern)


def _split_list(patterns: Sequence[str]) -> tuple[list[str], list[Any]]:
    """Allow/deny entries → (name patterns, IP networks)."""
    names, networks = [], []
    for raw in patterns:
        pattern = raw.strip().lower().rstrip(".")
        if pattern:
            network = parse_network(pattern)
            (names if network is None else networks).append(pattern if network is None else network)
    return names, networks


def _name_listed(host: str, names: Sequence[str]) -> bool:
    return any(_name_matches(host, pattern) for pattern in names)


def _parse(url: str, param: str | None) -> tuple[URL, str]:
    try:
        parsed = URL(url)
        scheme, host, port = parsed.scheme.lower(), parsed.raw_host, parsed.port
    except (ValueError, TypeError):
        raise _refuse(url, "malformed URL", param, "invalid_url") from None
    if scheme not in ("http", "https"):
        raise _refuse(url, "only http and https URLs can be fetched", param, "invalid_url")
    if not host or port is None or port == 0:
        raise _refuse(url, "missing or invalid host or port", param, "invalid_url")
    if parsed.raw_user is not None or parsed.raw_password is not None:
        raise _refuse(url, "credentials in URLs are not accepted", param, "invalid_url")
    return parsed.with_fragment(None), host.lower().rstrip(".")


async def _resolve(host: str, port: int, resolver: Resolver, url: str, param: str | None) -> list[IPAddress]:
    try:
        answers = await resolver(host, port)
        ips = [ip_address(str(a)) for a in answers]
    except (OSError, ValueError, UnicodeError) as exc:
        log.info("resolving %s failed: %s", host[:100], type(exc).__name__)
        raise _refuse(url, "the host could not be resolved", param, "invalid_url") from None
    if not ips:
        raise _refuse(url, "the host could not be resolved", param, "invalid_url")
    return ips


async def vet_url(
    url: str, settings: GuardPolicy, resolver: Resolver | None = None, *, param: str | None = None
) -> VettedTarget:
    """Check ``url`` against the guard's rules and resolve it once; raise ``InvalidRequest`` if refused."""
    parsed, host = _parse(url, param)
    port = parsed.port
    assert port is not None
    try:
        literal = parse_host_ip(host)
    except HostSyntaxError:
        raise _refuse(url, "invalid host", param, "invalid_url") from None
    if literal is None and not _HOST_CHARS.fullmatch(host):
        raise _refuse(url, "invalid host", param, "invalid_url")
    if literal is not None:
        host = str(literal)
    deny_names, deny_nets = _split_list(settings.deny_hosts)
    allow_names, allow_nets = _split_list(settings.allow_hosts)
    if _name_listed(host, deny_names):
        raise _refuse(url, "the host is on the deny list", param)
    allowing = bool(allow_names or allow_nets)
    if allowing and not allow_nets and not _name_listed(host, allow_names):
        raise _refuse(url, "the host is not on the allow list", param)  # refused before any lookup
    ips = [literal] if literal is not None else await _resolve(host, port, resolver or system_resolver, url, param)
    for ip in ips:
        reason = blocked_reason(ip, allow_loopback=settings.allow_loopback)
        if reason is not None:
            log.info("refused %s: %s address", describe_url(url), reason)
            raise _refuse(url, "it points to a non-public address", param)
    if any(ip in net for ip in ips for net in deny_nets):
        raise _refuse(url, "the host is on the deny list", param)
    if allowing and not (
        _name_listed(host, allow_names) or all(any(ip in net for net in allow_nets) for ip in ips)
    ):
        raise _refuse(url, "the host is not on the allow list", param)
    return VettedTarget(
        str(parsed), parsed.scheme.lower(), host, port, tuple(str(ip) for ip in ips), literal is not None
    )


async def _open(
    session: aiohttp.ClientSession, method: str, target: VettedTarget, headers: Mapping[str, str],
    data: Any, timeout: aiohttp.ClientTimeout | None,
) -> aiohttp.ClientResponse:
    """Connect to the first vetted address that answers (never to anything else)."""
    sni = target.host if target.scheme == "https" and not target.host_is_ip else None
    last: Exception | None = None
    for address in target.addresses:
        try:
            return await session.request(
                method, target.connect_url(address), headers={**headers, "Host": target.host_header},
                data=data, allow_redirects=False, server_hostname=sni,
                **({"timeout": timeout} if timeout is not None else {}),
            )
        except aiohttp.ClientConnectorError as exc:
            last = exc
    assert last is not None
    raise last


def _next_hop(target: VettedTarget, location: str, param: str | None) -> str:
    try:
        return str(URL(target.url).join(URL(location)))
    except (ValueError, TypeError):
        raise _refuse(location, "invalid redirect location", param, "invalid_url") from None


@contextlib.asynccontextmanager
async def guarded_request(
    session: aiohttp.ClientSession, method: str, url: str, settings: GuardPolicy,
    resolver: Resolver | None = None, *, headers: Mapping[str, str] | None = None, data: Any = None,
    timeout: aiohttp.ClientTimeout | None = None, param: str | None = None,
) -> AsyncIterator[GuardedResponse]:
    """Send a request through the guard, following redirects by hand; yield the final response.

    The response is released on exit. Redirects beyond ``settings.max_redirects`` raise
    ``InvalidRequest`` (code ``too_many_redirects``). 303 (and 301/302 after a POST) continue as GET
    without a body, as browsers do. Network errors propagate as ``aiohttp.ClientError``.
    """
    headers = dict(headers or {})
    hops = 0
    while True:
        target = await vet_url(url, settings, resolver, param=param)
        resp = await _open(session, method, target, headers, data, timeout)
        location = resp.headers.get("Location")
        if resp.status not in REDIRECTS or location is None:
            break
        resp.release()
        if hops >= settings.max_redirects:
            raise _refuse(url, f"more than {settings.max_redirects} redirects", param, "too_many_redirects")
        hops += 1
        url = _next_hop(target, location, param)
        if resp.status == 303 or (resp.status in (301, 302) and method.upper() == "POST"):
            method, data = "GET", None
    try:
        yield GuardedResponse(resp, target, hops)
    finally:
        resp.release()
