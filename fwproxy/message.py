# -*- test-case-name: tests.test_message -*-
"""The objects filters see: :class:`Headers`, :class:`Request` and :class:`Response`.

They are plain mutable values with no I/O. Header names and values are kept as the bytes that
arrived, in order, with repeated fields (``Set-Cookie``) as separate entries; look-ups are
case-insensitive. Methods accept ``str`` (encoded as Latin-1) or ``bytes``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

HeaderName = str | bytes
#: a request's ``(host, port, addresses)``
Destination = tuple[str, int, tuple[str, ...] | None]


def _b(value: HeaderName) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


class Headers:
    """An ordered, case-insensitive multimap of header fields, as ``(name, value)`` byte pairs."""

    __slots__ = ("_fields",)

    def __init__(self, fields: Iterable[tuple[HeaderName, HeaderName]] = ()) -> None:
        self._fields: list[tuple[bytes, bytes]] = [(_b(k), _b(v)) for k, v in fields]

    @classmethod
    def _adopt(cls, fields: list[tuple[bytes, bytes]]) -> Headers:
        """Wrap an already-built list of byte pairs without copying (hot path)."""
        h = cls.__new__(cls)
        h._fields = fields
        return h

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, (str, bytes)):
            return False
        n = _b(name).lower()
        return any(k.lower() == n for k, _ in self._fields)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and other._fields == self._fields

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"

    def fields(self) -> list[tuple[bytes, bytes]]:
        """The underlying list of ``(name, value)`` pairs (a live view: edits show)."""
        return self._fields

    def get(self, name: HeaderName, default: bytes | None = None) -> bytes | None:
        """The first value of ``name``, or ``default``."""
        n = _b(name).lower()
        for k, v in self._fields:
            if k.lower() == n:
                return v
        return default

    def get_all(self, name: HeaderName) -> list[bytes]:
        """Every value of ``name``, in order."""
        n = _b(name).lower()
        return [v for k, v in self._fields if k.lower() == n]

    def add(self, name: HeaderName, value: HeaderName) -> None:
        """Append a field, keeping any existing ones of the same name."""
        self._fields.append((_b(name), _b(value)))

    def set(self, name: HeaderName, value: HeaderName) -> None:
        """Replace every field called ``name`` by one field, at the first one's position."""
        n, v = _b(name), _b(value)
        low = n.lower()
        out: list[tuple[bytes, bytes]] = []
        placed = False
        for k, old in self._fields:
            if k.lower() == low:
                if not placed:
                    out.append((n, v))
                    placed = True
            else:
                out.append((k, old))
        if not placed:
            out.append((n, v))
        self._fields[:] = out

    def remove(self, name: HeaderName) -> int:
        """Remove every field called ``name``; return how many were removed."""
        low = _b(name).lower()
        fields = self._fields
        for k, _ in fields:
            if k.lower() == low:
                break
        else:
            return 0  # the usual case: nothing to remove, no new list
        before = len(fields)
        fields[:] = [(k, v) for k, v in fields if k.lower() != low]
        return before - len(fields)

    def copy(self) -> Headers:
        return Headers._adopt(list(self._fields))


class Request:
    """A request head as filters see it.

    ``method`` is e.g. ``"GET"`` or ``"CONNECT"``. For a relayed request ``scheme`` is ``"http"``
    or ``"https"`` (the proxy originates the TLS), ``host`` the lower-cased host from the absolute URI (an IPv6 address without brackets),
    ``port`` its port, and ``path`` the origin-form target (path and query) that goes upstream.
    For CONNECT, ``path`` is empty. ``url`` is the target as the client sent it. ``client`` is
    the client's ``(host, port)`` as the transport reports it (a PROXY-protocol transport reports
    the original client). ``user`` is the authenticated user name, or ``""``. ``addresses`` is
    ``None`` until the destination is resolved, then the list of IP address strings the proxy
    may connect to: a filter that narrows it narrows where the proxy connects. A filter may
    change ``host``, ``port`` or ``addresses`` (route the request elsewhere): the proxy then
    resolves the new destination where needed and checks it against the access rules and the
    SSRF guard again before connecting (see :class:`fwproxy.interfaces.IDestinationCheck`).
    ``credentials`` is the client's ``Proxy-Authorization`` value (hop-by-hop: it is removed
    from ``headers`` and never sent upstream).
    """

    __slots__ = (
        "method",
        "url",
        "scheme",
        "host",
        "port",
        "path",
        "version",
        "headers",
        "client",
        "user",
        "addresses",
        "notes",
        "credentials",
        "checked",
        "local_port",
    )

    def __init__(
        self,
        method: str,
        url: str,
        host: str,
        port: int,
        path: bytes = b"",
        headers: Headers | None = None,
        version: str = "1.1",
        client: tuple[str, int] = ("", 0),
        scheme: str = "http",
        user: str = "",
    ) -> None:
        self.method = method
        self.url = url
        self.scheme = scheme
        self.host = host
        self.port = port
        self.path = path
        self.version = version
        self.headers = headers if headers is not None else Headers()
        self.client = client
        self.user = user
        self.addresses: list[str] | None = None
        #: free-form per-transaction storage for filters (e.g. to pass data to a later hook)
        self.notes: dict[str, Any] = {}
        #: the client's ``Proxy-Authorization`` value (never forwarded upstream), or None
        self.credentials: bytes | None = None
        #: the :attr:`destination` the access rules last allowed (set by a destination check,
        #: such as the ``acl`` filter); when a later filter changes the destination, the proxy
        #: has it checked again before connecting
        self.checked: Destination | None = None
        #: the proxy's own port the client connected to (the listener's, also behind a
        #: PROXY-protocol listener); 0 when not known
        self.local_port = 0

    @property
    def destination(self) -> Destination:
        """``(host, port, addresses)`` as they stand (addresses as a tuple, or None)."""
        a = self.addresses
        return (self.host, self.port, tuple(a) if a is not None else None)

    @property
    def authority(self) -> str:
        """``host:port``, with brackets around an IPv6 host."""
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"{h}:{self.port}"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.url} from {self.client[0]}>"


class Response:
    """A response: either an upstream response head (``body`` empty; the body streams), or an
    answer a filter or the proxy makes itself (``body`` is the whole body).

    ``result_code`` is the squid-style code logged for a response a filter makes
    (``TCP_DENIED`` by default for 403 and 407, otherwise ``NONE_NONE``).
    """

    __slots__ = ("status", "reason", "headers", "body", "result_code")

    def __init__(
        self,
        status: int,
        reason: str = "",
        headers: Headers | Iterable[tuple[HeaderName, HeaderName]] | None = None,
        body: bytes = b"",
        result_code: str | None = None,
    ) -> None:
        self.status = status
        self.reason = reason or REASONS.get(status, "")
        if headers is None:
            headers = Headers()
        elif not isinstance(headers, Headers):
            headers = Headers(headers)
        self.headers = headers
        self.body = body
        self.result_code = result_code

    @classmethod
    def text(cls, status: int, message: str, result_code: str | None = None) -> Response:
        """A short ``text/plain`` answer (one line), as the proxy's own error pages are."""
        body = (message.rstrip("\n") + "\n").encode("utf-8")
        return cls(
            status,
            headers=[("Content-Type", "text/plain; charset=utf-8")],
            body=body,
            result_code=result_code,
        )

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


REASONS: dict[int, str] = {
    100: "Continue",
    101: "Switching Protocols",
    103: "Early Hints",
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    206: "Partial Content",
    301: "Moved Permanently",
    302: "Found",
    303: "See Other",
    304: "Not Modified",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    414: "URI Too Long",
    417: "Expectation Failed",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
    508: "Loop Detected",
}
