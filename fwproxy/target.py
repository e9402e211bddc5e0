# -*- test-case-name: tests.test_target -*-
"""Request targets, sans-IO: the absolute-form URI of a relayed request and the authority of a
CONNECT, each turned into the destination the proxy connects to (or a 400 explaining why not).

A relayed request is ``http://`` or ``https://`` (the proxy originates the TLS of an
``https://`` one, verified: :mod:`fwproxy.origination`); the default ports are 80 and 443.
``ws://`` and ``wss://`` (WebSocket URIs, which some clients send a proxy: aiohttp) name the
same resources as ``http://`` and ``https://`` (RFC 6455 §3) and are relayed as them.
"""

from __future__ import annotations

from typing import Any

import httptools

from fwproxy.http1 import ProtocolError

#: the schemes a relayed request may have: their names and default ports
SCHEMES = {b"http": ("http", 80), b"https": ("https", 443)}


def http_form(target: bytes) -> bytes:
    """``target`` with a ``ws://`` or ``wss://`` scheme spelt ``http://`` or ``https://``
    (the URI the proxy relays, checks and logs); any other target as it is."""
    scheme = target[:6].lower()
    if scheme.startswith(b"ws://"):
        return b"http" + target[2:]
    if scheme == b"wss://":
        return b"https" + target[3:]
    return target


def parse_absolute(target: bytes) -> tuple[str, str, int, bytes, bytes]:
    """``(scheme, host, port, origin_form, host_header)`` of an absolute-form ``http://`` or
    ``https://`` target (``scheme`` lower-case: ``"http"`` or ``"https"``).

    :raise ProtocolError: 400 for anything else.
    """
    try:
        # Any: httptools' stubs type the parts as bytes/int, but absent ones are None (and a
        # compiled build checks the declared types at run time)
        url: Any = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        raise ProtocolError(400, "malformed request target") from None
    scheme = (url.schema or b"").lower()
    if scheme == b"http":  # the usual case first, without a look-up
        name, default = "http", 80
    else:
        known = SCHEMES.get(scheme)
        if known is None:
            raise ProtocolError(400, "only http:// and https:// URLs can be relayed")
        name, default = known
    host = (url.host or b"").lower()
    if not host or b" " in host or b"\t" in host or b"\\" in host:
        raise ProtocolError(400, "the request target has no host")
    port = url.port or default
    path = url.path or b"/"
    if not path.startswith(b"/"):
        path = b"/" + path
    if url.query is not None:
        path += b"?" + url.query
    hh = b"[" + host + b"]" if b":" in host else host
    if url.port is not None:
        hh += b":%d" % url.port
    return name, host.decode("ascii", "replace"), port, path, hh


def parse_authority(target: bytes) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → ``(host, port)``; raise ValueError otherwise."""
    t = target.decode("ascii")
    if t.startswith("["):
        end = t.find("]")
        if end < 0 or t[end + 1 : end + 2] != ":":
            raise ValueError("bad IPv6 authority")
        host, port_s = t[1:end], t[end + 2 :]
        if ":" not in host:
            raise ValueError("brackets around a non-IPv6 host")
    else:
        host, sep, port_s = t.rpartition(":")
        if not sep or not host or ":" in host:
            raise ValueError("CONNECT needs host:port")
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError("bad port")
    if any(c in host for c in " /\\@?#"):
        raise ValueError("bad host")
    return host.lower(), int(port_s)
