# -*- test-case-name: tests.test_acl_regex -*-
"""The ACL types that match regular expressions, as Squid's: ``dstdom_regex`` (the host,
case-insensitive), ``url_regex`` (the URL as Squid sees it: scheme and host in lower case, the
scheme's default port left out, %-decoded; ``host:port`` for CONNECT) and ``urlpath_regex`` (the
path and query of a relayed request, %-decoded; never a CONNECT, which has no path), both
case-sensitive. %-decoding is Squid's ``rfc1738_unescape`` (:func:`unescape`), so that
``/%61dmin`` is ``/admin`` to a rule, as it is to the origin. Case-insensitivity where it is not
the default is written ``(?i)`` in the pattern (Squid's ``-i``). Patterns are Python regular
expressions, compiled once; :func:`regexes` names the bad one.
"""

from __future__ import annotations

import re

from fwproxy.acl_base import Acl, AclContext, AclError, strings


def regexes(name: str, kind: str, values: object, flags: int) -> tuple[re.Pattern[str], ...]:
    """Compile an ACL's patterns; :class:`AclError` names the first that is not one."""
    out = []
    for v in strings(name, kind, values):
        try:
            out.append(re.compile(v, flags))
        except re.error as e:
            raise AclError(f"acl.{name}.{kind}: bad regular expression {v!r}: {e}") from None
    return tuple(out)


class DstDomRegexAcl(Acl):
    kind = "dstdom_regex"

    def __init__(self, name: str, values: object) -> None:
        super().__init__(name)
        self.patterns = regexes(name, self.kind, values, re.IGNORECASE)

    def match(self, ctx: AclContext) -> bool:
        return any(p.search(ctx.host) for p in self.patterns)


class UrlRegexAcl(Acl):
    """Squid's ``url_regex``: the URL as :func:`squid_url` gives it; case-sensitive like
    squid's (``(?i)`` in a pattern for case-insensitive)."""

    kind = "url_regex"

    def __init__(self, name: str, values: object) -> None:
        super().__init__(name)
        self.patterns = regexes(name, self.kind, values, 0)

    def match(self, ctx: AclContext) -> bool:
        url = squid_url(ctx.url)
        return any(p.search(url) for p in self.patterns)


#: an absolute URL: scheme, authority, the rest (path, query)
_ABSOLUTE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)", re.S)
_DEFAULT_PORTS = {"http": "80", "https": "443", "ftp": "21"}


def squid_url(url: str) -> str:
    """``url`` (a request target as the client sent it) as Squid's ``url_regex`` matches it
    (``HttpRequest::effectiveRequestUri``, then ``rfc1738_unescape``): the scheme and host in
    lower case (the host without trailing dots), no user info, the port only when it is not the
    scheme's default, the path ``/`` when empty, all %-decoded; a CONNECT's ``host:port``
    with the host so too."""
    m = _ABSOLUTE.fullmatch(url)
    if m is None:  # CONNECT's authority form
        host, port = _host_port(url)
        return unescape(f"{host}:{port}".encode("latin-1", "replace"))
    scheme, authority, rest = m.group(1).lower(), m.group(2), m.group(3)
    host, port = _host_port(authority.rpartition("@")[2])
    if port == _DEFAULT_PORTS.get(scheme):
        port = ""
    shown = f"{scheme}://{host}{':' + port if port else ''}{rest or '/'}"
    return unescape(shown.encode("latin-1", "replace"))


def _host_port(authority: str) -> tuple[str, str]:
    """``(host, port)`` of ``host[:port]``: the host in lower case without trailing dots (as
    Squid's URL parser leaves it), an IPv6 address in brackets; the port as written."""
    host, port = authority, ""
    if not host.endswith("]") and ":" in host:
        host, _, port = host.rpartition(":")
    return host.lower().rstrip("."), port


#: ``%%`` or ``%`` and two hex digits (see :func:`unescape`)
_ESCAPE = re.compile(rb"%(%|[0-9A-Fa-f]{2})")


def _unescaped(m: re.Match[bytes]) -> bytes:
    code = m.group(1)
    if code == b"%":
        return b"%"
    value = int(code, 16)
    return bytes((value,)) if value else m.group(0)


def unescape(path: bytes) -> str:
    """``path`` %-decoded as Squid's ``rfc1738_unescape``: ``%XX`` becomes its byte except
    ``%00``, which stays; ``%%`` becomes ``%``; a ``%`` not followed by two hex digits stays.
    Bytes are read as Latin-1 (one character per byte, as Squid's C string regex sees them)."""
    if b"%" not in path:
        return path.decode("latin-1")
    return _ESCAPE.sub(_unescaped, path).decode("latin-1")


class UrlPathRegexAcl(Acl):
    """Squid's ``urlpath_regex``: the path with its query (``/a/b.gif?x=1``), %-decoded;
    case-sensitive (``(?i)`` in a pattern for case-insensitive). A CONNECT has no path: Squid
    cannot evaluate the ACL and counts it as not matching (so ``!`` of it matches)."""

    kind = "urlpath_regex"

    def __init__(self, name: str, values: object) -> None:
        super().__init__(name)
        self.patterns = regexes(name, self.kind, values, 0)

    def match(self, ctx: AclContext) -> bool:
        if not ctx.path:
            return False
        path = unescape(ctx.path)
        return any(p.search(path) for p in self.patterns)
