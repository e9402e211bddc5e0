# -*- test-case-name: tests.test_http1 -*-
"""HTTP/1.1 framing, sans-IO: bytes in, events out; heads and chunks out as bytes.

:class:`RequestReader` and :class:`ResponseReader` wrap httptools (llhttp) parsers. They keep
llhttp's strict defaults (no leniencies: conflicting Content-Length, Content-Length with
Transfer-Encoding, bare CR, obs-fold and the like are errors) and add what a proxy needs around
it: limits on the head, only HTTP/1.0 and 1.1, trailers dropped, heads of responses to HEAD found
by hand (llhttp cannot be told the request was HEAD), and close-delimited bodies ended by EOF.

Events are tuples ``(kind, payload)``:

- ``(HEAD, RequestHead | ResponseHead)``
- ``(INTERIM, ResponseHead)`` for a 1xx response other than 101
- ``(BODY, bytes)`` decoded body data
- ``(END, None)`` the message is complete
- ``(REST, bytes)`` bytes after a CONNECT head: they belong to the tunnel; or bytes after the
  head of a bodiless Upgrade request, which the reader holds back (:attr:`RequestReader.held`)
  until the answer says whether they are another protocol's (after a ``101``) or the next
  requests (:meth:`RequestReader.resume`)
- ``(ERROR, ProtocolError)`` the stream is unusable from here on
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httptools
from mypy_extensions import mypyc_attr

# the hop-by-hop field policy, long part of this module: its names are still found here
from fwproxy.hopbyhop import HOP_BY_HOP as HOP_BY_HOP
from fwproxy.hopbyhop import connection_tokens as connection_tokens
from fwproxy.hopbyhop import end_to_end as end_to_end
from fwproxy.hopbyhop import proxy_credentials as proxy_credentials

HEAD, INTERIM, BODY, END, REST, ERROR = range(6)

Event = tuple[int, object]

NO_BODY_STATUS = frozenset({204, 304})


class ProtocolError(Exception):
    """The peer broke HTTP/1.1 framing; ``status`` is what to answer (for a client)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@mypyc_attr(allow_interpreted_subclasses=True)
class RequestHead:
    """A parsed request head. ``target`` and ``method`` are raw bytes as received."""

    __slots__ = (
        "method",
        "target",
        "version",
        "headers",
        "keep_alive",
        "chunked",
        "content_length",
        "size",
        "upgrade",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: str,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        chunked: bool,
        content_length: int | None,
        size: int = 0,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.chunked = chunked
        self.content_length = content_length
        self.size = size
        #: a bodiless request offering an upgrade, whose reader holds back what follows it
        self.upgrade = False

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


@mypyc_attr(allow_interpreted_subclasses=True)
class ResponseHead:
    """A parsed response head; ``body`` is ``"none"``, ``"length"``, ``"chunked"`` or
    ``"close"`` (delimited by the connection closing)."""

    __slots__ = ("status", "reason", "version", "headers", "keep_alive", "body", "content_length")

    def __init__(
        self,
        status: int,
        reason: bytes,
        version: str,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        body: str,
        content_length: int | None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.body = body
        self.content_length = content_length


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for k, v in headers:
        if len(k) == 14 and k.lower() == b"content-length":
            return int(v)
    return None


def _codings(headers: list[tuple[bytes, bytes]]) -> list[bytes] | None:
    """The transfer codings, lower-cased, in order; None without Transfer-Encoding."""
    codings = None
    for k, v in headers:
        if len(k) == 17 and k.lower() == b"transfer-encoding":
            codings = (codings or []) + [c.strip().lower() for c in v.split(b",")]
    return codings


def _is_chunked(headers: list[tuple[bytes, bytes]]) -> bool:
    # RFC 9112 §6.3: only a final "chunked" frames the body; a response with another final
    # coding is delimited by the connection closing
    codings = _codings(headers)
    return bool(codings) and codings[-1] == b"chunked"  # type: ignore[index]


@mypyc_attr(allow_interpreted_subclasses=True)
class RequestReader:
    """Parses a client's byte stream into request events, pipelined requests included."""

    def __init__(
        self, max_head_size: int = 65536, max_headers: int = 200, max_target: int = 65536
    ) -> None:
        self.max_head_size = max_head_size
        self.max_headers = max_headers
        self.max_target = max_target
        self._parser = httptools.HttpRequestParser(self)
        self._events: list[Event] = []
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._size = 0
        self._in_head = False
        self._dead = False
        self._progress = False  # a head callback fired during this feed
        self._stalled = 0  # head bytes fed since the last head callback (httptools buffers them)
        self._priming = False
        #: True between the first byte of a request and the end of its head
        self.head_started = False
        #: stopped behind a bodiless Upgrade request: what follows is not parsed (until resume)
        self.held = False

    # -- httptools callbacks: trivial on purpose (an exception here loses its offset) ------
    def on_message_begin(self) -> None:
        self._in_head = True
        self._progress = True
        self.head_started = True
        self._url = []
        self._headers = []
        self._size = 0

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._size += len(url)
        self._progress = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:
            self._headers.append((name, value))
            self._size += len(name) + len(value) + 4
            self._progress = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        self.head_started = False
        if self._dead or self._priming:
            return
        p = self._parser
        target = b"".join(self._url)
        error = self._check_limits(target)
        if error is not None:
            self._fail(error)
            return
        version = p.get_http_version()
        if version != "1.1" and version != "1.0":
            self._fail(ProtocolError(505, f"HTTP/{version} is not supported; use HTTP/1.1"))
            return
        headers = self._headers
        codings = _codings(headers)
        if codings is not None and codings != [b"chunked"]:
            # refuse before the head is announced (llhttp refuses a non-final "chunked" only
            # after it); a coding we would strip while relaying the body is not ours to drop
            if codings[-1] != b"chunked":
                self._fail(ProtocolError(400, "Transfer-Encoding must end with chunked"))
            else:
                self._fail(ProtocolError(501, "transfer codings other than chunked"))
            return
        chunked = codings is not None
        self._events.append(
            (
                HEAD,
                RequestHead(
                    p.get_method(),
                    target,
                    version,
                    headers,
                    p.should_keep_alive(),
                    chunked,
                    None if chunked else _content_length(headers),
                    self._size,
                ),
            )
        )

    def on_body(self, data: bytes) -> None:
        if not self._dead:
            self._events.append((BODY, data))

    def on_message_complete(self) -> None:
        if not self._dead:
            self._events.append((END, None))

    # -- API ---------------------------------------------------------------------------------
    def _check_limits(self, target: bytes) -> ProtocolError | None:
        if len(target) > self.max_target:
            return ProtocolError(414, "request target too long")
        if self._size > self.max_head_size:
            return ProtocolError(431, "request header block too large")
        if len(self._headers) > self.max_headers:
            return ProtocolError(431, "too many request header fields")
        return None

    def _fail(self, error: ProtocolError) -> None:
        self._dead = True
        self._events.append((ERROR, error))

    def resume(self, data: bytes) -> list[Event]:
        """The request the reader :attr:`held` after was answered without an upgrade: parse
        ``data``, what the client sent behind it, and what follows as HTTP again."""
        if not self.held:
            return []
        self.held = self._dead = False
        self._parser = httptools.HttpRequestParser(self)
        return self.feed(data)

    def feed(self, data: bytes) -> list[Event]:
        """Parse ``data``; return the events it completes (possibly none)."""
        if self._dead:
            return []
        events = self._events = []
        self._progress = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            offset = e.args[0]
            heads = [p for kind, p in events if kind == HEAD]
            if heads and heads[-1].method == b"CONNECT":  # type: ignore[attr-defined]
                self._dead = True
                events.append((REST, data[offset:]))
                return events
            last: Any = heads[-1] if heads else None
            if last is not None and not last.has_body:
                # An Upgrade request: what follows is the new protocol's only if the origin
                # answers 101 (fwproxy.upgrade); hold it back until the answer says
                last.upgrade = True
                self._dead = self.held = True
                events.append((REST, data[offset:]))
                return events
            # An Upgrade request with a body (never upgraded: the header is hop-by-hop): carry
            # on with a fresh parser, the message itself is complete.
            self._parser = httptools.HttpRequestParser(self)
            if last is not None and last.has_body and events and events[-1][0] == END:
                # httptools makes llhttp skip the body of an Upgrade request: that END is
                # early, and the body must not be read as the next request. Prime the fresh
                # parser with a head that frames the same body.
                events.pop()
                framing = (
                    b"Transfer-Encoding: chunked"
                    if last.chunked
                    else b"Content-Length: %d" % last.content_length  # type: ignore[attr-defined]
                )
                self._priming = True
                try:
                    self._parser.feed_data(b"POST / HTTP/1.1\r\n" + framing + b"\r\n\r\n")
                finally:
                    self._priming = False
            rest = data[offset:]
            if rest:
                more = self.feed(rest)
                events.extend(more)
                self._events = events
            return events
        except httptools.HttpParserError as e:
            if not self._dead:
                msg = str(e) or type(e).__name__
                # "Invalid HTTP version" is unsupported; "Expected CRLF after version" malformed
                low = msg.lower()
                status = 505 if low.startswith("invalid") and "version" in low else 400
                if isinstance(e, httptools.HttpParserInvalidMethodError):
                    status = 400
                self._fail(ProtocolError(status, f"malformed request: {msg}"))
            return events
        if self._in_head and not self._dead:
            self._stalled = 0 if self._progress else self._stalled + len(data)
            if self._size + self._stalled > self.max_head_size:
                self._fail(ProtocolError(431, "request header block too large"))
        return events


@mypyc_attr(allow_interpreted_subclasses=True)
class ResponseReader:
    """Parses one upstream response (and the 1xx responses before it)."""

    def __init__(self, request_method: bytes = b"GET", max_head_size: int = 65536) -> None:
        self._head_only = request_method == b"HEAD"
        self.max_head_size = max_head_size
        self._parser = httptools.HttpResponseParser(self)
        self._events: list[Event] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason: list[bytes] = []
        self._size = 0
        self._in_head = False
        self._buffer = b""  # only for responses to HEAD
        #: "none" before the final head; its body kind afterwards
        self.body_kind = ""
        #: the final response is complete
        self.done = False
        #: bytes arrived after the response ended (the connection can't be reused)
        self.extra = False
        #: the origin intends to keep the connection open after this response
        self.keep_alive = False
        self.started = False
        self._dead = False
        self._progress = False  # as in RequestReader: bound what httptools buffers in a head
        self._stalled = 0
        #: a ``101`` (with Upgrade and Connection: upgrade) was the final response: every byte
        #: after it is the new protocol's (REST events); whether one was asked for is the
        #: handler's to check (fwproxy.response, fwproxy.upgrade)
        self.switched = False

    # -- httptools callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.done:
            self.extra = True
            return
        self.started = True
        self._in_head = True
        self._progress = True
        self._headers = []
        self._reason = []
        self._size = 0

    def on_status(self, reason: bytes) -> None:
        self._reason.append(reason)
        self._size += len(reason)
        self._progress = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head and not self.done:
            self._headers.append((name, value))
            self._size += len(name) + len(value) + 4
            self._progress = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self.done or self._dead:
            return
        p = self._parser
        status = p.get_status_code()
        version = p.get_http_version()
        headers = self._headers
        reason = b"".join(self._reason)
        if self._size > self.max_head_size:
            self._fail(ProtocolError(502, "upstream response head too large"))
            return
        if version != "1.1" and version != "1.0":
            self._fail(ProtocolError(502, f"upstream answered with HTTP/{version}"))
            return
        if 100 <= status < 200:
            if status == 101:
                if not p.should_upgrade():
                    self._fail(ProtocolError(502, "upstream's 101 lacks Upgrade or Connection"))
                    return
                self.switched = True
                self.body_kind = "none"
                head = ResponseHead(status, reason, version, headers, False, "none", None)
                self._events.append((HEAD, head))
                return
            self._events.append(
                (INTERIM, ResponseHead(status, reason, version, headers, True, "none", None))
            )
            return
        length = None
        if self._head_only or status in NO_BODY_STATUS:
            kind = "none"
            if self._head_only:
                length = _content_length(headers)
        elif _is_chunked(headers):
            kind = "chunked"
        else:
            length = _content_length(headers)
            kind = "close" if length is None else "length"
        self.body_kind = kind
        keep = p.should_keep_alive() and kind != "close"
        self.keep_alive = keep
        self._events.append(
            (HEAD, ResponseHead(status, reason, version, headers, keep, kind, length))
        )
        if self._head_only:
            self._finish()

    def on_body(self, data: bytes) -> None:
        if not self.done and not self._dead:
            self._events.append((BODY, data))

    def on_message_complete(self) -> None:
        if self.body_kind and not self._head_only and not self.done and not self._dead:
            self._finish()

    def _finish(self) -> None:
        self.done = True
        self._events.append((END, None))
        # the parser holds this reader (its callbacks): let go of it, so that a finished
        # response is freed at once, not by the garbage collector (nothing parses after done)
        self._parser = None  # type: ignore[assignment]

    def _fail(self, error: ProtocolError) -> None:
        self._dead = True
        self._events.append((ERROR, error))

    # -- API ---------------------------------------------------------------------------------
    def feed(self, data: bytes) -> list[Event]:
        """Parse ``data``; return the events it completes."""
        if self._dead:
            return []
        if self.done:
            if self.switched:
                return [(REST, data)]
            self.extra = self.extra or bool(data)
            return []
        events = self._events = []
        if self._head_only:
            self._feed_head_only(data)
            return events
        self._progress = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            if self.switched:
                events.append((REST, data[e.args[0] :]))
        except httptools.HttpParserError as e:
            if self.done:  # bytes after the response: not this response's error
                self.extra = True
            elif not self._dead:
                self._fail(ProtocolError(502, f"malformed upstream response: {e}"))
        if self._in_head and not self._dead and not self.done:
            self._stalled = 0 if self._progress else self._stalled + len(data)
            if self._size + self._stalled > self.max_head_size:
                self._fail(ProtocolError(502, "upstream response head too large"))
        return events

    def _feed_head_only(self, data: bytes) -> None:
        # llhttp would read the body a HEAD response announces; cut each head out by hand and
        # give it to a fresh parser.
        self.started = True
        buf = self._buffer + data
        while not self.done and not self._dead:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self.max_head_size:
                    self._fail(ProtocolError(502, "upstream response head too large"))
                self._buffer = buf
                return
            head, buf = buf[: end + 4], buf[end + 4 :]
            self._parser = httptools.HttpResponseParser(self)
            try:
                self._parser.feed_data(head)
            except httptools.HttpParserUpgrade:
                if self.switched:  # a 101: what follows its head is the new protocol's
                    self._finish()
            except httptools.HttpParserError as e:
                self._fail(ProtocolError(502, f"malformed upstream response: {e}"))
        self._buffer = b""
        if buf and self.done:
            if self.switched:
                self._events.append((REST, buf))
            else:
                self.extra = True

    def eof(self, clean: bool = True) -> list[Event]:
        """The upstream closed (``clean``: with a FIN, not a reset): end a close-delimited body,
        or report truncation. A reset never completes a body (RFC 9112 §8)."""
        if self.done or self._dead:
            return []
        if self.body_kind == "close" and clean:
            self.done = True
            return [(END, None)]
        self._dead = True
        if self.body_kind:
            return [(ERROR, ProtocolError(502, "upstream closed the connection mid-body"))]
        return [(ERROR, ProtocolError(502, "upstream closed the connection without a response"))]


# -- serialising ------------------------------------------------------------------------------


def _fields(fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    return b"".join([b"%s: %s\r\n" % f for f in fields])


def request_head(method: bytes, target: bytes, fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Serialise an HTTP/1.1 request head."""
    return method + b" " + target + b" HTTP/1.1\r\n" + _fields(fields) + b"\r\n"


def response_head(status: int, reason: bytes, fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Serialise an HTTP/1.1 status line and header block."""
    return b"HTTP/1.1 %d %s\r\n" % (status, reason) + _fields(fields) + b"\r\n"


def chunk(data: bytes) -> list[bytes]:
    """One chunk of the chunked transfer coding, as pieces for ``writeSequence``."""
    return [b"%x\r\n" % len(data), data, b"\r\n"]


LAST_CHUNK = b"0\r\n\r\n"
