# -*- test-case-name: tests.test_relay -*-
"""The HTTP relay: one absolute-form request forwarded upstream and its response streamed back.

Steps: parse the target into a :class:`Request` (origin-form path, Host from the URI, hop-by-hop
fields removed); run the request filters; resolve (unless a filter already did) and refuse a
forwarding loop; take an idle pooled connection or connect; send the head and stream the body
(re-chunked when the client sent it chunked); parse the response, run the response filters,
send the head with framing fit for the client (chunked for HTTP/1.1 when the origin's length
is unknown, close-delimited for HTTP/1.0) and stream the body. Flow control both ways: the
upstream transport is the producer of the client's, and the client protocol (through its pause
reasons) the producer of the upstream's.
"""

from __future__ import annotations

from typing import Any

import httptools
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.python.failure import Failure

from fwproxy import chain, http1, writes
from fwproxy.http1 import BODY, END, ERROR, HEAD, INTERIM, ProtocolError, ResponseHead
from fwproxy.message import Headers, Request, Response
from fwproxy.record import TCP_MISS, TCP_MISS_ABORTED
from fwproxy.timer import Deadline
from fwproxy.transaction import USAGE, Transaction
from fwproxy.upstream import UpstreamProtocol
from fwproxy.writes import STREAM_BUFFER

# states
FILTERING, CONNECTING, SENDING, AWAITING, RESPONDING = range(5)

_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


def parse_absolute(target: bytes) -> tuple[str, int, bytes, bytes]:
    """``(host, port, origin_form, host_header)`` of an absolute-form ``http://`` target.

    :raise ProtocolError: 400 for anything else.
    """
    try:
        url = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        raise ProtocolError(400, "malformed request target") from None
    scheme = (url.schema or b"").lower()
    if scheme != b"http":
        if scheme == b"https":
            raise ProtocolError(400, "https:// URLs go through a tunnel: use CONNECT host:443")
        raise ProtocolError(400, "only http:// URLs can be relayed")
    host = (url.host or b"").lower()
    if not host or b" " in host or b"\t" in host or b"\\" in host:
        raise ProtocolError(400, "the request target has no host")
    port = url.port or 80
    path = url.path or b"/"
    if not path.startswith(b"/"):
        path = b"/" + path
    if url.query is not None:
        path += b"?" + url.query
    hh = b"[" + host + b"]" if b":" in host else host
    if url.port is not None:
        hh += b":%d" % url.port
    return host.decode("ascii", "replace"), port, path, hh


def _noop() -> None:
    pass


def _codings(fields: list[tuple[bytes, bytes]]) -> bytes:
    """Transfer codings other than the final ``chunked`` (e.g. ``gzip, ``), which the relay
    must pass on since it only re-does the chunking."""
    codings = [
        c.strip()
        for k, v in fields
        if k.lower() == b"transfer-encoding"
        for c in v.split(b",")
        if c.strip()
    ]
    if codings and codings[-1].lower() == b"chunked":
        codings.pop()
    return b"".join(c + b", " for c in codings)


class RelayTransaction(Transaction):
    """One relayed request/response."""

    def __init__(self, proto: Any, head: http1.RequestHead) -> None:
        super().__init__(proto, head)
        self.state = FILTERING
        self.upstream: UpstreamProtocol | None = None
        self.timer: Deadline | None = None
        self._pending: list[http1.Event] | None = None  # upstream events held during a hook
        self._chunked_out = False
        self._client_keep = head.keep_alive
        self._retried = False
        self._waiting: Deferred[Any] | None = None
        self._out: list[bytes] = []  # response bytes produced by one upstream read
        #: the request body is being streamed upstream (independent of the response's state:
        #: an origin may answer before it has read the whole body)
        self.sending = False
        self.result = TCP_MISS

    # -- request side --------------------------------------------------------------------
    def start(self) -> None:
        head = self.head
        try:
            host, port, path, host_header = parse_absolute(head.target)
        except ProtocolError as e:
            self.answer(Response.text(e.status, f"fwproxy: {e.message}. {USAGE}"), close=True)
            return
        fields = http1.end_to_end(head.headers)
        placed = False
        duplicate = False
        for i, (k, _) in enumerate(fields):
            if len(k) == 4 and k.lower() == b"host":
                if not placed:
                    fields[i] = (k, host_header)
                    placed = True
                else:
                    fields[i] = (b"", b"")
                    duplicate = True
        if duplicate:
            fields = [f for f in fields if f[0]]
        elif not placed:
            fields.insert(0, (b"Host", host_header))
        self.request = request = Request(
            head.method.decode("latin-1"),
            head.target.decode("latin-1"),
            host,
            port,
            path,
            Headers._adopt(fields),
            head.version,
            self.proto.client,
        )
        request.credentials = http1.proxy_credentials(head.headers)
        limit = self.proto.factory.config.limits.max_body_size
        if limit and head.content_length is not None and head.content_length > limit:
            self.answer(Response.text(413, f"fwproxy: request body over {limit} bytes"), close=True)
            return
        self.run_filters(self.proto.factory.chain.request)

    def deciding(self) -> bool:
        return self.state == FILTERING

    def _filtered(self, answer: Response | None) -> None:
        if answer is not None:
            self.answer(answer)
            return
        self.state = CONNECTING
        self.resolve_destination()

    def connect_upstream(self) -> None:
        self._acquire()

    def _acquire(self) -> None:
        req = self.request
        pool = self.proto.factory.pool
        key = (req.host, req.port)
        conn = pool.take_idle(key, req.addresses)
        if conn is not None:
            self._connected(conn)
        elif pool.at_limit(key):
            self._arm_connect()
            d = pool.wait(key, req.addresses)
            self._waiting = d
            d.addCallback(self._handed).addErrback(lambda f: f.trap(CancelledError))
        else:
            self._connect(req.addresses[0])

    def _handed(self, conn: UpstreamProtocol | None) -> None:
        """Waited for a connection to the origin: got one, or room for a new one."""
        self._waiting = None
        if self.done:
            if conn is not None:
                conn.pool.release(conn)
            return
        if conn is not None:
            self._connected(conn)
        else:
            self._acquire()

    def _connect(self, address: str) -> None:
        self._arm_connect()
        req = self.request
        d = self.proto.factory.pool.connect(
            (req.host, req.port), address, self.proto.factory.config.timeouts.connect
        )
        self._waiting = d
        d.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, conn: UpstreamProtocol) -> None:
        self._waiting = None
        if self.done:
            conn.pool.release(conn)
            return
        self.upstream = conn
        self.upstream_address = conn.address
        head = self.head
        conn.begin(self, head.method)
        req = self.request
        fields = req.headers.fields()
        if head.chunked:
            fields = [*fields, (b"Transfer-Encoding", b"chunked")]
        transport = conn.transport
        writes.write(transport, http1.request_head(head.method, req.path, fields))
        if not self.request_done:
            timeouts = self.proto.factory.config.timeouts
            self.timer.restart(timeouts.read, self._read_timeout)  # type: ignore[union-attr]
        if self.request_done:
            self._request_sent()
        else:
            self.state = SENDING
            self.sending = True
            if head.has_body:
                transport.registerProducer(self.proto.producer, True)  # type: ignore[union-attr]
            self.proto.process()

    def accepts(self, kind: int) -> bool:
        if kind == ERROR:
            return not self.request_done
        if self.sending or self.discarding:
            return kind == BODY or kind == END
        return kind == END and not self.head.has_body

    def client_event(self, kind: int, payload: Any) -> None:
        if not self.sending:
            super().client_event(kind, payload)
            return
        transport = self.upstream.transport  # type: ignore[union-attr]
        if kind == BODY:
            self.bytes_in += len(payload)
            self.timer.touch()  # type: ignore[union-attr]
            limit = self.proto.factory.config.limits.max_body_size
            if limit and self.bytes_in - self.head.size > limit:
                self._drop_upstream()
                self.client_error(ProtocolError(413, f"request body over {limit} bytes"))
                return
            if self.head.chunked:
                transport.writeSequence(http1.chunk(payload))
            else:
                transport.write(payload)
        elif kind == END:
            self.request_done = True
            self.sending = False
            if self.head.chunked:
                transport.write(http1.LAST_CHUNK)
            if self.head.has_body:
                transport.unregisterProducer()
                self.proto.resume_reason("upstream")
            self._request_sent()
        else:
            self.client_error(payload)

    def _request_sent(self) -> None:
        if self.state in (SENDING, CONNECTING, FILTERING):
            self.state = AWAITING
        if (
            self.state == AWAITING
            and self.upstream is not None
            and not self.upstream.reader.started  # type: ignore[union-attr]
        ):
            self.timer.restart(  # type: ignore[union-attr]
                self.proto.factory.config.timeouts.upstream_first_byte, self._first_byte_timeout
            )

    def _first_byte_timeout(self) -> None:
        self._error(504, f"{self.request.authority} did not answer in time")

    def _read_timeout(self) -> None:
        self._error(504, f"{self.request.authority}: no data for too long")

    # -- response side -------------------------------------------------------------------
    def upstream_events(self, events: list[http1.Event]) -> None:
        if self._pending is not None:
            self._pending.extend(events)
            return
        try:
            self._upstream_events(events)
        finally:
            self.flush()

    def flush(self) -> None:
        """Send what the events of one read produced, in one write."""
        out = self._out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            writes.write(self.proto.transport, data)

    def _upstream_events(self, events: list[http1.Event]) -> None:
        for i, (kind, payload) in enumerate(events):
            if self.done:
                return
            if kind == BODY:
                self._body(payload)  # type: ignore[arg-type]
            elif kind == HEAD:
                self._head(payload)  # type: ignore[arg-type]
                if self._pending is not None:
                    self._pending.extend(events[i + 1 :])
                    return
            elif kind == END:
                self._end()
            elif kind == INTERIM:
                self._interim(payload)  # type: ignore[arg-type]
            elif kind == ERROR:
                self._upstream_error(payload)  # type: ignore[arg-type]

    def upstream_lost(self, reason: Failure) -> None:
        if not self.done and self.upstream is not None:
            self._upstream_error(ProtocolError(502, "upstream connection lost"))

    def _interim(self, rh: ResponseHead) -> None:
        self.timer.touch()  # type: ignore[union-attr]
        if self.head.version == "1.1":
            data = http1.response_head(rh.status, rh.reason, http1.end_to_end(rh.headers))
            self.bytes_out += len(data)
            self._out.append(data)

    def _head(self, rh: ResponseHead) -> None:
        self.state = RESPONDING
        self.timer.restart(self.proto.factory.config.timeouts.read, self._read_timeout)  # type: ignore[union-attr]
        response = Response(rh.status, "", Headers._adopt(http1.end_to_end(rh.headers)))
        response.reason = rh.reason.decode("latin-1")
        self._rh = rh
        hooks = self.proto.factory.chain.response
        if not hooks:
            self._send_head(response)
            return
        try:
            result = chain.run(hooks, self.request, response)
        except Exception:
            self.fail(Failure())
            return
        if isinstance(result, Deferred):
            self._pending = []
            self.upstream.transport.pauseProducing()  # type: ignore[union-attr]

            def resume(answer: Response | None) -> None:
                pending, self._pending = self._pending, None
                if self.done:
                    return
                self.upstream.transport.resumeProducing()  # type: ignore[union-attr]
                self._filtered_head(response, answer)
                if not self.done and pending:
                    self.upstream_events(pending)

            self._wait(maybeDeferred(lambda: result), resume)
        else:
            self._filtered_head(response, result)

    def _filtered_head(self, response: Response, answer: Response | None) -> None:
        if answer is None:
            self._send_head(response)
            return
        # a filter replaced the response: the upstream body is not wanted
        self._drop_upstream()
        self.answer(answer, close=not self.request_done)

    def _send_head(self, response: Response) -> None:
        rh = self._rh
        head = self.head
        fields = response.headers.fields()
        keep = self._client_keep
        kind = rh.body
        if kind == "chunked" or kind == "close":
            if head.version == "1.1":
                self._chunked_out = True
                fields = [*fields, (b"Transfer-Encoding", _codings(rh.headers) + b"chunked")]
            else:
                keep = False
        if not keep:
            fields = [*fields, (b"Connection", b"close")]
        elif head.version == "1.0":
            fields = [*fields, (b"Connection", b"keep-alive")]
        self._client_keep = keep
        data = http1.response_head(response.status, response.reason.encode("latin-1"), fields)
        self.status = response.status
        ct = response.headers.get(b"content-type")
        if ct:
            self.content_type = ct.decode("latin-1")
        self.bytes_out += len(data)
        self._out.append(data)
        if kind != "none":
            up = self.upstream.transport  # type: ignore[union-attr]
            if kind != "length" or (rh.content_length or 0) > STREAM_BUFFER:
                # a large body: stream it in bigger pieces, as a tunnel does
                writes.bulk(self.proto.transport, up)
            self.proto.transport.registerProducer(up, True)
            self._producing = True

    def _body(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.timer.touch()  # type: ignore[union-attr]
        if self._chunked_out:
            pieces = http1.chunk(data)
            self.bytes_out += len(pieces[0]) + 2
            self._out.extend(pieces)
        else:
            self._out.append(data)

    def _end(self) -> None:
        if self._chunked_out:
            self._out.append(http1.LAST_CHUNK)
            self.bytes_out += 5
        self.flush()
        conn, self.upstream = self.upstream, None
        self._unregister()
        if conn is not None:
            if self.request_done:
                conn.pool.release(conn)
            else:
                conn.pool._close(conn)  # the request body was not all sent: not reusable
        self.finish(self._client_keep)

    def _unregister(self) -> None:
        if getattr(self, "_producing", False):
            self._producing = False
            self.proto.transport.unregisterProducer()

    def _upstream_error(self, error: ProtocolError) -> None:
        if self.done:
            return
        conn = self.upstream
        if (
            conn is not None
            and conn.reused
            and not self._retried
            and self.status == 0
            and not conn.reader.started  # type: ignore[union-attr]
            and self.request_done
            and not self.head.has_body
            and self.head.method in _IDEMPOTENT
        ):
            # a kept-alive connection the origin had closed: try once on a fresh one
            self._retried = True
            self.upstream = None
            conn.handler = None
            conn.pool._close(conn)
            self.state = CONNECTING
            self.timer.restart(self.proto.factory.config.timeouts.connect, self._connect_timeout)  # type: ignore[union-attr]
            self._connect(self.request.addresses[0])
            return
        self._error(error.status, error.message)

    def _error(self, status: int, message: str) -> None:
        """Upstream trouble: answer ``status`` if nothing was sent yet, else cut the response."""
        if self.done:
            return
        self._drop_upstream()
        if self.status == 0:
            self.answer(
                Response.text(status, f"fwproxy: {message}", TCP_MISS), close=not self.request_done
            )
        else:
            self.result = TCP_MISS_ABORTED
            self.abort()

    def _drop_upstream(self) -> None:
        self._unregister()
        conn, self.upstream = self.upstream, None
        if conn is not None:
            conn.handler = None
            if conn.transport is not None:
                conn.transport.abortConnection()  # type: ignore[attr-defined]

    def client_lost(self) -> None:
        if not self.done:
            self.result = TCP_MISS_ABORTED
        super().client_lost()

    def cleanup(self) -> None:
        self.flush()
        if self.timer is not None:
            self.timer.expired = _noop  # the connection re-arms it when this transaction ends
        if self._waiting is not None:
            d, self._waiting = self._waiting, None
            d.cancel()
        if self.upstream is not None:
            self._drop_upstream()
        self._unregister()
        self.proto.resume_reason("upstream")
