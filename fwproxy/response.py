# -*- test-case-name: tests.test_relay -*-
"""The response side of the relay: an origin's response streamed back to the client.

:class:`ResponseRelay` takes the events an :class:`fwproxy.upstream.UpstreamProtocol` parses
(interim responses, the head, body pieces, the end, errors), runs the response filters on the
head, sends the head with framing fit for the client (chunked for HTTP/1.1 when the origin's
length is unknown, close-delimited for HTTP/1.0) and streams the body with the upstream transport
registered as the client transport's producer, so a slow client pauses the origin. What one
upstream read produces goes to the client in one write.

It uses its relay transaction only through :class:`Exchange`.
"""

from __future__ import annotations

from typing import Any, Protocol

from mypy_extensions import mypyc_attr
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from fwproxy import chain, http1
from fwproxy.contracts import ClientConnection, ProxyServices
from fwproxy.http1 import BODY, END, ERROR, HEAD, INTERIM, ProtocolError, RequestHead, ResponseHead
from fwproxy.message import Headers, Request, Response
from fwproxy.streaming import PACE_OVER, Pacing
from fwproxy.timer import Deadline
from fwproxy.upstream import UpstreamProtocol


class Exchange(Protocol):
    """What the response side uses of its relay transaction."""

    conn: ClientConnection
    proxy: ProxyServices
    deadline: Deadline
    head: RequestHead

    @property
    def req(self) -> Request: ...

    upstream: UpstreamProtocol | None
    done: bool
    status: int
    bytes_out: int
    content_type: str

    def wait(self, d: Deferred[Any], callback: Any) -> None: ...
    def fail(self, failure: Failure) -> None: ...
    def replace_response(self, answer: Response) -> None: ...
    def response_started(self) -> None: ...
    def response_ended(self, keep_alive: bool) -> None: ...
    def upstream_failed(self, error: ProtocolError) -> None: ...


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


class _Ended:
    """Stands for the exchange once it has ended: late upstream events see ``done`` and stop."""

    done = True
    upstream = None


_ENDED: Any = _Ended()


@mypyc_attr(allow_interpreted_subclasses=True)
class ResponseRelay:
    """Streams one upstream response to the client (see the module docstring)."""

    def __init__(self, exchange: Exchange) -> None:
        self.x = exchange
        #: keep the client connection after this response
        self.client_keep = exchange.head.keep_alive
        self._head: ResponseHead | None = None
        self._pending: list[http1.Event] | None = None  # events held while a hook decides
        self._chunked = False
        self._producing: Pacing | bool = False
        self._whole = False  # the response's head and its whole body arrived in one read
        self._out: list[bytes] = []  # what the events of one upstream read produced

    # -- events from the upstream --------------------------------------------------------
    def upstream_events(self, events: list[http1.Event]) -> None:
        if self._pending is not None:
            self._pending.extend(events)
            return
        try:
            self._events(events)
        finally:
            self.flush()

    def upstream_lost(self, reason: Failure) -> None:
        if not self.x.done and self.x.upstream is not None:
            self.x.upstream_failed(ProtocolError(502, "upstream connection lost"))

    def flush(self) -> None:
        """Send what the events of one read produced, in one write."""
        out = self._out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            self.x.conn.write(data)

    def _events(self, events: list[http1.Event]) -> None:
        x = self.x
        for i, (kind, payload) in enumerate(events):
            if x.done:
                return
            if kind == BODY:
                self._body(payload)  # type: ignore[arg-type]
            elif kind == HEAD:
                # the whole response came in this read: nothing left to stream with flow control
                self._whole = events[-1][0] == END
                self._got_head(payload)  # type: ignore[arg-type]
            elif kind == END:
                self._end()
            elif kind == INTERIM:
                self._interim(payload)  # type: ignore[arg-type]
            elif kind == ERROR:
                x.upstream_failed(payload)  # type: ignore[arg-type]
            if self._pending is not None:  # a hook is deciding: hold the rest of this read
                self._pending.extend(events[i + 1 :])
                return

    def _interim(self, rh: ResponseHead) -> None:
        self.x.deadline.touch()
        if self.x.head.version == "1.1":
            data = http1.response_head(rh.status, rh.reason, http1.end_to_end(rh.headers))
            self.x.bytes_out += len(data)
            self._out.append(data)

    def _got_head(self, rh: ResponseHead) -> None:
        x = self.x
        if rh.status == 101:  # an upgrade is fwproxy.upgrade's, and only when it offered one
            x.upstream_failed(ProtocolError(502, "upstream switched protocols unasked"))
            return
        x.response_started()
        response = Response(rh.status, "", Headers._adopt(http1.end_to_end(rh.headers)))
        response.reason = rh.reason.decode("latin-1")
        self._head = rh
        hooks = x.proxy.chain.response
        if not hooks:
            self._send_head(response)
            return
        try:
            result = chain.run(hooks, x.req, response)
        except Exception:
            x.fail(Failure())
            return
        if isinstance(result, Deferred):
            self._pending = []
            upstream = x.upstream
            assert upstream is not None
            upstream.transport.pauseProducing()

            def resume(answer: Response | None) -> None:
                pending, self._pending = self._pending, None
                if x.done:
                    return
                upstream.transport.resumeProducing()
                self._filtered(response, answer)
                if not x.done and pending:
                    self.upstream_events(pending)

            x.wait(maybeDeferred(lambda: result), resume)
        else:
            self._filtered(response, result)

    def _filtered(self, response: Response, answer: Response | None) -> None:
        if answer is None:
            self._send_head(response)
        else:
            self.x.replace_response(answer)

    def _send_head(self, response: Response) -> None:
        x = self.x
        rh = self._head
        assert rh is not None
        head = x.head
        fields = response.headers.fields()
        keep = self.client_keep
        kind = rh.body
        if kind == "chunked" or kind == "close":
            if head.version == "1.1":
                self._chunked = True
                fields = [*fields, (b"Transfer-Encoding", _codings(rh.headers) + b"chunked")]
            else:
                keep = False
        if not keep:
            fields = [*fields, (b"Connection", b"close")]
        elif head.version == "1.0":
            fields = [*fields, (b"Connection", b"keep-alive")]
        self.client_keep = keep
        data = http1.response_head(response.status, response.reason.encode("latin-1"), fields)
        x.status = response.status
        ct = response.headers.get(b"content-type")
        if ct:
            x.content_type = ct.decode("latin-1")
        x.bytes_out += len(data)
        self._out.append(data)
        if kind != "none" and x.upstream is not None and not self._whole:
            up = x.upstream.transport
            client = x.conn.stream
            source = self._source(up)
            if kind != "length" or (rh.content_length or 0) > PACE_OVER:
                # a large body: large reads while the client keeps up, small ones once it lags
                self._producing = Pacing((client, up), x.proxy.reactor)
                self._producing.link(source, client)
            else:
                client.registerProducer(source, True)
                self._producing = True

    def _source(self, upstream: Any) -> Any:
        """The producer to register on the client for ``upstream`` (body filters gate it)."""
        return upstream

    def _body(self, data: bytes) -> None:
        self.x.bytes_out += len(data)
        self.x.deadline.touch()
        if self._chunked:
            pieces = http1.chunk(data)
            self.x.bytes_out += len(pieces[0]) + 2
            self._out.extend(pieces)
        else:
            self._out.append(data)

    def _end(self) -> None:
        if self._chunked:
            self._out.append(http1.LAST_CHUNK)
            self.x.bytes_out += 5
        self.flush()
        self.stop_streaming()
        self.x.response_ended(self.client_keep)

    def close(self) -> None:
        """The exchange has ended: stop streaming and let go of it, so that the transaction
        and this object do not keep each other alive (freed at once, not by the collector)."""
        self.flush()
        self.stop_streaming()
        self.x = _ENDED

    def stop_streaming(self) -> None:
        """The upstream is no longer the client transport's producer."""
        producing, self._producing = self._producing, False
        if isinstance(producing, Pacing):
            producing.detach()
        elif producing:
            self.x.conn.stream.unregisterProducer()

    @property
    def started(self) -> bool:
        """The response head has arrived (the request can no longer be retried)."""
        return self._head is not None
