# -*- test-case-name: tests.test_http1 -*-
"""Hop-by-hop header fields (RFC 9110 §7.6.1), sans-IO: which fields of a message are for one
connection only, and so are never relayed as they are.

The fixed set (:data:`HOP_BY_HOP`, with the proxy credentials, which are for this proxy only)
and every field the ``Connection`` header names (but ``Content-Length``, which frames the body
as relayed) are dropped by :func:`end_to_end`; an upgrade the relay attempts puts ``Upgrade``
and ``Connection: upgrade`` back (:mod:`fwproxy.upgrade`).
"""

from __future__ import annotations

from collections.abc import Iterable

#: Hop-by-hop fields (RFC 9110 §7.6.1) plus proxy credentials, which are for this proxy only.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)


def connection_tokens(fields: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The lower-cased field names listed in ``Connection`` headers."""
    tokens: set[bytes] = set()
    for k, v in fields:
        if len(k) == 10 and k.lower() == b"connection":
            tokens.update(t.strip().lower() for t in v.split(b",") if t.strip())
    return frozenset(tokens)


_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b"Keep-Alive"})
#: fields the relay forwards the body by, which ``Connection`` cannot name away
_FRAMING = frozenset({b"content-length"})


def end_to_end(fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``fields`` without hop-by-hop ones: the fixed set and every field ``Connection`` names."""
    out = []
    named = False
    for k, v in fields:
        lk = k.lower()
        if lk in HOP_BY_HOP:
            if lk == b"connection" and v.lower() not in _PLAIN_CONNECTION:
                named = True  # names other fields, not just keep-alive or close
            continue
        out.append((k, v))
    if named:  # rare: a second pass for the fields Connection names
        # never the message's framing: a Content-Length dropped as a connection option would
        # send its body on unframed (as the next request upstream: smuggling)
        tokens = connection_tokens(fields) - _FRAMING
        out = [(k, v) for k, v in out if k.lower() not in tokens]
    return out


def proxy_credentials(fields: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The first ``Proxy-Authorization`` value, or None."""
    for k, v in fields:
        if len(k) == 19 and k.lower() == b"proxy-authorization":
            return v
    return None
