# -*- test-case-name: tests.test_bodyrelay -*-
"""The relay's side of body filters: a filtered request body sent upstream, a filtered response
body sent to the client.

Only transactions whose filter chain has body filters pay for any of this: the relay makes a
:class:`FilteredResponseRelay` instead of a plain :class:`fwproxy.response.ResponseRelay` when
the chain has :class:`fwproxy.interfaces.IResponseBodyFilter` hooks, and a
:class:`RequestBody` only for a request with a body when it has
:class:`fwproxy.interfaces.IRequestBodyFilter` hooks and one of them took the body.

Response side: the head is held back until the chain first passes on a non-empty piece (or the
body ends), so a transform can still replace the whole response until then. When a transform
may change the length, Content-Length is dropped and the body goes chunked to an HTTP/1.1
client and close-delimited to an HTTP/1.0 one. While a transform's Deferred is pending the
upstream is paused through a :class:`fwproxy.bodyfilter.FlowGate` (which the client's buffer
draining cannot undo) and the events of the read in progress are held.

Request side: a body whose length may change goes upstream chunked. While a transform's Deferred
is pending the transaction accepts no more body events from the client, so the client is not
read from.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from fwproxy import http1
from fwproxy.bodyfilter import FILTER, BodyChain, FlowGate, Output, drop_length
from fwproxy.chain import FilterError
from fwproxy.contracts import ClientConnection, ProxyServices
from fwproxy.http1 import END, ERROR
from fwproxy.message import Request, Response
from fwproxy.response import Exchange, ResponseRelay
from fwproxy.upstream import UpstreamProtocol


def transforms(hooks: tuple[Any, ...], *args: Any) -> BodyChain | None:
    """Ask every body-filter hook for its transform of one body; ``None`` if none took it."""
    taken = []
    for hook in hooks:
        try:
            t = hook(*args)
        except Exception:
            raise FilterError(hook, Failure()) from None
        if t is not None:
            if not (callable(getattr(t, "data", None)) and callable(getattr(t, "end", None))):
                # a plugin's bug: its failure (a 500), not an AttributeError at the first chunk
                error = TypeError(f"expected an IBodyTransform (data and end) or None, not {t!r}")
                raise FilterError(hook, Failure(error))
            taken.append(t)
    return BodyChain(taken) if taken else None


class _Cut(Exception):
    """A body filter replaced a message whose response had already started."""


class FilteredResponseRelay(ResponseRelay):
    """A :class:`ResponseRelay` that runs the response body filters (module docstring)."""

    def __init__(self, exchange: Exchange) -> None:
        super().__init__(exchange)
        self._chain: BodyChain | None = None
        self._held: tuple[int, bytes] | None = None  # status and head, until the first piece
        self._gate: FlowGate | None = None

    def _send_head(self, response: Response) -> None:
        x = self.x
        rh = self._head
        assert rh is not None
        if rh.body != "none":
            try:
                self._chain = transforms(x.proxy.chain.response_body, x.req, response)
            except FilterError:
                x.fail(Failure())
                return
        if self._chain is not None and x.upstream is not None:
            self._gate = FlowGate(x.upstream.transport)
            if not self._chain.keeps_length and rh.body == "length":
                # forwarded with a length of its own: chunked, or close-delimited for HTTP/1.0
                rh.body, rh.content_length = "chunked", None
                response.headers.remove(b"Content-Length")
        super()._send_head(response)
        if self._chain is not None and not x.done:
            # hold the head back (the plain relay's path stays as it was: this undoes its send)
            data = self._out.pop()
            x.bytes_out -= len(data)
            self._held = (x.status, data)
            x.status = 0

    def _source(self, upstream: Any) -> Any:
        return self._gate if self._gate is not None else upstream

    # -- the body ----------------------------------------------------------------------------
    def _body(self, data: bytes) -> None:
        chain = self._chain
        if chain is None:
            super()._body(data)
            return
        self.x.deadline.touch()
        self._run(chain.data, data)

    def _end(self) -> None:
        chain = self._chain
        if chain is None:
            super()._end()
            return
        self._chain = None  # late events (none should come) pass straight through
        self._run(chain.end, ending=True)

    def upstream_events(self, events: list[http1.Event]) -> None:
        if self._pending is not None:  # a filter is deciding; an error cannot wait for it
            for kind, payload in events:
                if kind == ERROR:
                    self.x.upstream_failed(payload)  # type: ignore[arg-type]
                    return
        super().upstream_events(events)

    def upstream_lost(self, reason: Failure) -> None:
        up = self.x.upstream
        if self._pending is not None and up is not None and up.reader is not None:
            if up.reader.done:
                return  # the whole response is here: its end waits for a filter's answer
        super().upstream_lost(reason)

    def _run(self, step: Any, *args: Any, ending: bool = False) -> None:
        x = self.x
        try:
            result = step(*args)
        except FilterError:
            x.fail(Failure())
            return
        if not isinstance(result, Deferred):
            self._output(result, ending)
            return
        self._pending = []
        gate = self._gate
        if gate is not None:
            gate.hold(FILTER)

        def decided(answer: Output) -> None:
            pending, self._pending = self._pending, None
            if x.done:
                return
            if gate is not None:
                gate.release(FILTER)
            self._output(answer, ending)
            if not x.done:
                if pending:
                    self.upstream_events(pending)
                else:
                    self.flush()

        x.wait(result, decided)

    def _output(self, result: Output, ending: bool) -> None:
        x = self.x
        if isinstance(result, Response):
            if self._held is not None:
                self._held = None
                x.replace_response(result)
            else:
                x.fail(Failure(_Cut("a body filter answered after the response had started")))
            return
        if result or ending:
            held, self._held = self._held, None
            if held is not None:
                x.status, data = held
                x.bytes_out += len(data)
                self._out.append(data)
        for piece in result:
            super()._body(piece)
        if ending:
            super()._end()

    def close(self) -> None:
        self._held = None
        super().close()


class Uploader(Protocol):
    """What :class:`RequestBody` uses of its relay transaction."""

    conn: ClientConnection
    proxy: ProxyServices
    upstream: UpstreamProtocol | None
    status: int
    done: bool
    #: the transaction's request body filters: this object, until the filters have ended
    body_filter: RequestBody | None

    def wait(self, d: Deferred[Any], callback: Any) -> None: ...
    def fail(self, failure: Failure) -> None: ...
    def replace_response(self, answer: Response) -> None: ...
    def client_event(self, kind: int, payload: Any) -> None: ...


class RequestBody:
    """Runs the request body filters of one request and writes what they pass on upstream.
    Once the filters have ended it hands the client's END back to the transaction (with
    :attr:`Uploader.body_filter` cleared), which ends the upload as it would unfiltered."""

    def __init__(
        self,
        txn: Uploader,
        chain: BodyChain | None,
        chunked: bool,
        last_chunk: bool,
        error: Failure | None = None,
    ) -> None:
        self.txn = txn
        self.chain = chain
        #: the body goes upstream chunked
        self.chunked = chunked
        self._last_chunk = last_chunk  # chunked here, not by the client: the last chunk is ours
        self._error = error  # a hook raised: the transaction fails at the first body event
        #: a transform's Deferred is pending: take no more body events
        self.waiting = False

    @classmethod
    def start(
        cls, txn: Uploader, request: Request, head: http1.RequestHead, fields: list[Any]
    ) -> tuple[RequestBody | None, list[Any]]:
        """The filters of ``request``'s body (``None`` if no filter took it) and the head
        ``fields`` to send upstream (without Content-Length when the length may change)."""
        try:
            chain = transforms(txn.proxy.chain.request_body, request)
        except FilterError:
            return cls(txn, None, head.chunked, False, Failure()), fields
        if chain is None:
            return None, fields
        chunked = head.chunked or not chain.keeps_length
        if chunked and not head.chunked:
            fields = drop_length(fields)
        return cls(txn, chain, chunked, chunked and not head.chunked), fields

    def data(self, chunk: bytes) -> None:
        if self.chain is not None:
            self._run(self.chain.data, chunk)
        elif self._error is not None:
            self.txn.fail(self._error)

    def end(self) -> None:
        if self.chain is not None:
            self._run(self.chain.end, ending=True)
        elif self._error is not None:
            self.txn.fail(self._error)

    def _run(self, step: Any, *args: Any, ending: bool = False) -> None:
        txn = self.txn
        try:
            result = step(*args)
        except FilterError:
            txn.fail(Failure())
            return
        if not isinstance(result, Deferred):
            self._output(result, ending)
            return
        self.waiting = True

        def decided(answer: Output) -> None:
            self.waiting = False
            self._output(answer, ending)
            if not txn.done and not ending:
                txn.conn.process()  # the body events held meanwhile

        txn.wait(result, decided)

    def _output(self, result: Output, ending: bool) -> None:
        txn = self.txn
        if isinstance(result, Response):
            if txn.status == 0:
                txn.replace_response(result)
            else:
                txn.fail(Failure(_Cut("a body filter answered after the response had started")))
            return
        up = txn.upstream
        if up is None:
            return  # the upstream is gone (the origin answered and closed): nothing to send
        transport = up.transport
        for piece in result:
            if self.chunked:
                transport.writeSequence(http1.chunk(piece))
            else:
                transport.write(piece)
        if ending:
            if self._last_chunk:
                transport.write(http1.LAST_CHUNK)
            txn.body_filter = None
            txn.client_event(END, None)
