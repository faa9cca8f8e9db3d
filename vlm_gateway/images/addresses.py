"""Address rules for the SSRF guard: IP literals in every spelling, and which addresses are off-limits.

``parse_host_ip`` reads a URL host the way browsers (the WHATWG URL standard) and ``inet_aton`` do, so
``2130706433``, ``0177.0.0.1``, ``0x7f.0.0.1`` and ``127.1`` are all recognised as 127.0.0.1 and vetted
as such, never passed to a resolver that might read them differently.
"""

from __future__ import annotations

import ipaddress
import re
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

IPAddress = IPv4Address | IPv6Address

_NAT64 = ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix: last 32 bits are an IPv4 address
_NAT64_LOCAL = ip_network("64:ff9b:1::/48")  # RFC 8215 local-use translation prefix
# IANA's special-purpose address registries (RFC 6890 and later), the blocks not globally reachable. The
# ``ipaddress`` flags below say the same on a current Python; this table does not depend on the
# interpreter's build (before 3.11.10 / 3.12.4, ``is_global`` called 192.0.0.0/24, with Oracle Cloud's
# metadata address 192.0.0.192, public).
_SPECIAL_PURPOSE = tuple(ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "100::/64", "100:0:0:1::/64", "2001::/23", "2001:db8::/32", "3fff::/20",
    "5f00::/16", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
))
_DIGITS = {10: re.compile(r"[0-9]+"), 8: re.compile(r"[0-7]*"), 16: re.compile(r"[0-9a-fA-F]*")}
_NUMERIC_LABEL = re.compile(r"(?:[0-9]+|0[xX][0-9a-fA-F]*)")


class HostSyntaxError(ValueError):
    """The host looks numeric but is not a valid IPv4 address in any spelling."""


def _ipv4_number(part: str) -> int | None:
    base = 10
    if part[:2].lower() == "0x":
        base, part = 16, part[2:]
    elif len(part) > 1 and part[0] == "0":
        base, part = 8, part[1:]
    if not _DIGITS[base].fullmatch(part):
        return None
    return int(part, base) if part else 0


def _parse_ipv4(host: str) -> IPv4Address | None:
    """WHATWG IPv4 parsing: 1–4 dot-separated decimal/octal/hex numbers; ``None`` when not numeric."""
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    if not parts or not _NUMERIC_LABEL.fullmatch(parts[-1]):
        return None  # a domain name (its last label is not a number)
    numbers = [_ipv4_number(p) if p else None for p in parts]
    if len(parts) > 4 or any(n is None for n in numbers):
        raise HostSyntaxError(f"invalid IPv4 address {host!r}")
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):  # type: ignore[operator]
        raise HostSyntaxError(f"invalid IPv4 address {host!r}")
    value = last + sum(n << (8 * (3 - i)) for i, n in enumerate(head))  # type: ignore[operator]
    return IPv4Address(value)


def parse_host_ip(host: str) -> IPAddress | None:
    """The address a URL host denotes when it is an IP literal (any spelling), else ``None``.

    Raises :class:`HostSyntaxError` for hosts that end in a number but are not a valid address.
    """
    host = host.strip("[]")
    if ":" in host:
        try:
            return ip_address(host)
        except ValueError:
            raise HostSyntaxError(f"invalid IPv6 address {host!r}") from None
    return _parse_ipv4(host)


def _embedded_ipv4(ip: IPv6Address) -> tuple[str, IPv4Address] | None:
    """The IPv4 address hidden in an IPv4-mapped, NAT64 or 6to4 IPv6 address, with the form's name."""
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", ip.ipv4_mapped
    if ip in _NAT64:
        return "NAT64", IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return "6to4", ip.sixtofour
    return None


def blocked_reason(ip: IPAddress, *, allow_loopback: bool = False) -> str | None:
    """Why ``ip`` must not be contacted (``None``: it is a public unicast address).

    Refused: private, loopback (unless ``allow_loopback``), link-local (169.254.0.0/16 with the cloud
    metadata address, fe80::/10), multicast, reserved, unspecified, shared (100.64.0.0/10), site-local,
    and IPv4-mapped / NAT64 (64:ff9b::/96, 64:ff9b:1::/48) / 6to4 forms of any of those.
    """
    if isinstance(ip, IPv6Address):
        if ip.scope_id:
            return "scoped address"
        if ip in _NAT64_LOCAL:
            return "NAT64 local-use prefix"
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            form, v4 = embedded
            # only an IPv4-mapped address really is this host's loopback; the others route elsewhere
            inner = blocked_reason(v4, allow_loopback=allow_loopback and form == "IPv4-mapped")
            return f"{form} {inner}" if inner else None
        if ip.is_site_local:
            return "site-local"
    if ip.is_loopback:
        return None if allow_loopback else "loopback"
    for reason in ("unspecified", "link_local", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{reason}"):
            return reason.replace("_", "-")
    if not ip.is_global or any(ip in net for net in _SPECIAL_PURPOSE if net.version == ip.version):
        return "not globally routable"
    return None


def parse_network(pattern: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """An allow/deny entry as an IP network (``10.0.0.0/8``, ``203.0.113.7``), else ``None`` (a name)."""
    try:
        return ip_network(pattern.strip("[]"), strict=False)
    except ValueError:
        return None
