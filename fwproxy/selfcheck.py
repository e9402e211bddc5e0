# -*- test-case-name: tests.test_selfcheck -*-
"""Is this destination the proxy itself? One answer for loop detection and the ``to_self`` ACL.

A request whose destination is one of the proxy's own listening sockets would make the proxy
connect to itself, forever (a forwarding loop); a destination on the proxy's own host reaches
services that clients were never meant to reach. Both questions are asked of the same facts —
the addresses the proxy listens on, and the address a client connected to — and answered here,
sans-IO, so that loop detection (with a port) and the ``to_self`` ACL (any port) cannot drift
apart. A listener on every interface (``0.0.0.0``, ``::``) makes every loopback and unspecified
address the proxy's own, and the address the client reached it on. An IPv6 address that carries
an IPv4 one (``[64:ff9b::7f00:1]``, NAT64 to 127.0.0.1; see :mod:`fwproxy.special_addresses`) is
the proxy's own when that IPv4 address is.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence

from fwproxy.special_addresses import embedded_ipv4

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=4096)
def parse_ip(host: str) -> IPAddress | None:
    """An address string as a transport or resolver gives it (``%scope`` allowed), or None.
    IPv4-mapped IPv6 addresses become IPv4."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_self(
    addresses: Iterable[str | IPAddress],
    port: int | None,
    listening: Sequence[tuple[str, int]],
    local: tuple[str, int] | None = None,
) -> bool:
    """Whether any of ``addresses`` (on ``port``) is this proxy.

    :param addresses: the destination's addresses (strings or parsed).
    :param port: the destination port; ``None`` for "any port" (the ``to_self`` ACL: the proxy's
        host, whatever service on it).
    :param listening: the proxy's listening ``(host, port)`` pairs.
    :param local: the ``(host, port)`` the client connected to, when known: the proxy is
        reachable there whatever its listeners say (a PROXY-protocol or wildcard listener).
    """
    for a in addresses:
        ip = a if not isinstance(a, str) else parse_ip(a)
        if ip is not None and _is_self_ip(ip, port, listening, local):
            return True
    return False


def all_self(
    addresses: Iterable[IPAddress],
    port: int | None,
    listening: Sequence[tuple[str, int]],
    local: tuple[str, int] | None = None,
) -> bool:
    """Whether every one of ``addresses`` is this proxy (False for none)."""
    found = False
    for ip in addresses:
        if not _is_self_ip(ip, port, listening, local):
            return False
        found = True
    return found


def _is_self_ip(
    ip: IPAddress,
    port: int | None,
    listening: Sequence[tuple[str, int]],
    local: tuple[str, int] | None,
) -> bool:
    if _is_self_one(ip, port, listening, local):
        return True
    if ip.version == 6:
        for v4 in embedded_ipv4(int(ip)):
            if _is_self_one(ipaddress.IPv4Address(v4), port, listening, local):
                return True
    return False


def _is_self_one(
    ip: IPAddress,
    port: int | None,
    listening: Sequence[tuple[str, int]],
    local: tuple[str, int] | None,
) -> bool:
    if local is not None and (port is None or port == local[1]) and ip == parse_ip(local[0]):
        return True
    for host, lport in listening:
        if port is not None and port != lport:
            continue
        mine = parse_ip(host)
        if mine is None or mine.is_unspecified:  # a listener on every interface
            if ip.is_loopback or ip.is_unspecified:
                return True
            if local is not None and ip == parse_ip(local[0]):
                return True
        elif ip == mine:
            return True
    return False
