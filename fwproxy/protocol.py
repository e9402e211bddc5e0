# -*- test-case-name: tests.test_protocol -*-
"""One client connection: :class:`ProxyProtocol`, the :class:`fwproxy.contracts.ClientConnection`
every transaction talks to.

The protocol only moves bytes: it feeds what the client sends to a
:class:`fwproxy.http1.RequestReader`, queues the events, and hands them one at a time to the
current transaction (chosen by :mod:`fwproxy.dispatch`). An event the transaction cannot take yet
(a pipelined request, a body chunk while the upstream is still being connected) stays queued and
the client is not read from until it is taken: at most one read's worth of data is ever buffered
per connection. Once a transaction switches the connection to raw bytes (a tunnel), everything
goes to its :class:`fwproxy.contracts.RawHandler`.

Reading from the client is paused for several independent reasons (queued events, a full
upstream write buffer, a pending filter, a pending connection filter); it resumes only when none
is left.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mypy_extensions import mypyc_attr
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import classImplements

from fwproxy.admission import Admission
from fwproxy.connection import ClientConnectionBase
from fwproxy.contracts import (
    ClientTransaction,
    ProxyServices,
    RawHandler,
    TransactionKind,
)
from fwproxy.dispatch import transaction_kind
from fwproxy.http1 import END, ERROR, HEAD, REST, ProtocolError, RequestHead, RequestReader
from fwproxy.message import Response
from fwproxy.transaction import Transaction

log = Logger()


@mypyc_attr(allow_interpreted_subclasses=True)
class ProxyProtocol(ClientConnectionBase):
    """One client connection (see the module docstring)."""

    def __init__(self, proxy: ProxyServices, admission: Admission) -> None:
        super().__init__(proxy, admission)
        limits = proxy.config.limits
        self.reader: RequestReader | None = RequestReader(
            limits.max_header_size, limits.max_headers, limits.max_target
        )
        # a list, not a deque: it holds a few events at most, and an idle connection (a tunnel)
        # should cost as little memory as possible
        self.queue: list[tuple[int, Any]] = []
        self.current: ClientTransaction | None = None
        self._rest = False  # the reader has handed over the rest of the stream (REST events)
        self._processing = False
        self._idle_mode = True
        #: which transaction handles a request head (another for an intercepted tunnel's)
        self.kinds: Callable[[RequestHead], TransactionKind] = transaction_kind
        #: the connection inside this one's decrypted TLS (a bumped tunnel), which drains for it
        self.inner: ProxyProtocol | None = None

    def intercepted(self, kinds: Callable[[RequestHead], TransactionKind]) -> ProxyProtocol:
        """A connection for the HTTP inside this one's decrypted TLS (a bumped tunnel), its
        requests dispatched by ``kinds``; connected by the TLS layer's ``makeConnection``. It is
        not counted again (this connection stands for it against ``limits.max_connections``
        and in the metrics), nor are the connection filters run again; on a drain, it closes
        at its next request boundary, and its TLS close then ends this connection."""
        inner = ProxyProtocol(self.proxy, Admission(self.proxy.reactor))
        inner._identified = True
        inner.client_cert = self.client_cert
        inner.kinds = kinds
        self.inner = inner
        return inner

    def switch_to_raw(self, handler: RawHandler) -> None:
        self.raw = handler
        early = [p for k, p in self.queue if k == REST]
        self.queue.clear()
        self._pauses = 0
        # the HTTP side of this connection is over: let go of what it held
        self.reader = None
        for data in early:
            if data:
                handler.client_data(data)
        self.transport.resumeProducing()
        if self._read_closed:
            handler.client_eof()

    def transaction_finished(self, txn: ClientTransaction, keep_alive: bool) -> None:
        if txn is not self.current:
            return
        self.current = None
        if txn.logged:
            self.proxy.observe(txn.record())
        raw_done = self._rest and not any(k == HEAD for k, _ in self.queue)
        if not keep_alive or raw_done or self.raw is not None or self.proxy.draining:
            self._close()
            return
        timeouts = self.proxy.config.timeouts
        if self.reader is not None and self.reader.head_started:
            # part of the next head is already here: it must complete in time
            self._idle_mode = False
            self.deadline.restart(timeouts.request_header, self._header_timeout)
        else:
            self._idle_mode = True
            self.deadline.restart(timeouts.client_idle, self._idle_timeout)
        self.process()

    def dataReceived(self, data: bytes) -> None:
        if self.raw is not None:
            self.raw.client_data(data)
            return
        if self._closing:
            return
        if not self._identified and not self._identify():
            if self._gate is not None:
                self._gate.hold(data)
            return
        if self._gate is not None:
            self._gate.hold(data)
            return
        if self._rest or self.reader is None:
            self.queue.append((REST, data))
        else:
            if self._idle_mode and self.current is None:
                # the first byte of a request head: from now on, the head must arrive in time
                self._idle_mode = False
                self.deadline.restart(
                    self.proxy.config.timeouts.request_header, self._header_timeout
                )
            events = self.reader.feed(data)
            if events:
                for kind, _ in events:
                    if kind == REST:
                        self._rest = True
                self.queue.extend(events)
        self.process()

    def process(self) -> None:
        """Hand queued events to the current transaction while it takes them."""
        if self._processing:
            return
        self._processing = True
        try:
            q = self.queue
            while q and not self._closing:
                kind, payload = q[0]
                cur = self.current
                if cur is None:
                    del q[0]
                    if kind == HEAD:
                        self._start(payload)
                    elif kind == ERROR:
                        self._protocol_error(payload)
                elif cur.accepts(kind):
                    del q[0]
                    cur.client_event(kind, payload)
                else:
                    break
        finally:
            self._processing = False
        if self._closing:
            return
        if self.queue:
            self.pause("queue")
        else:
            self.resume("queue")
            if self._read_closed and self.current is None:
                self._close()

    def _start(self, head: RequestHead) -> None:
        # the request-header deadline keeps running: the transaction re-arms it for its own
        # phases; until it does (a filter's Deferred may be pending), the request must be
        # decided within what is left of it
        self._idle_mode = False
        txn = self.kinds(head)(self, self.proxy, head)
        self.current = txn
        try:
            txn.start()
        except Exception:
            txn.fail(Failure())

    def _answer_error(self, target: bytes, status: int, message: str) -> None:
        """Answer a request that never became a transaction (unparseable, too slow), and close."""
        head = RequestHead(b"NONE", target, "1.1", [], False, False, None)
        txn = Transaction(self, self.proxy, head)
        self.current = txn
        txn.answer(Response.text(status, f"fwproxy: {message}"), close=True)

    def _protocol_error(self, error: ProtocolError) -> None:
        self._answer_error(b"error:invalid-request", error.status, error.message)

    # -- timeouts --------------------------------------------------------------------------
    def _idle_timeout(self) -> None:
        if self.current is None and self.raw is None:
            self._close()

    def _header_timeout(self) -> None:
        if self.current is not None:
            self.current.stalled()
        elif self.raw is None:
            self._answer_error(b"error:request-timeout", 408, "request header timeout")

    # -- the end ----------------------------------------------------------------------------
    def closing(self) -> None:
        self.queue.clear()

    def readConnectionLost(self) -> None:
        self._read_closed = True
        if self._gate is not None:
            return  # a connection filter is deciding: handled once the held bytes are read
        if self.raw is not None:
            self.raw.client_eof()
            return
        cur = self.current
        if cur is not None:
            if not cur.request_done and not any(k == END or k == ERROR for k, _ in self.queue):
                cur.client_lost()  # the client gave up in the middle of its request
                self._close()
            return
        self.process()
        if self.current is None and not self._closing:
            self._close()

    def drain(self) -> None:
        """The proxy is shutting down: close now if idle, else after the current transaction.
        An intercepted tunnel is its inner connection's to close, between its requests."""
        inner = self.inner
        if inner is not None:
            inner.drain()
            return
        if self.current is None and self.raw is None and not self.queue:
            self._close()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._closing = True
        self.admission.forget(self)
        if self._deadline is not None:
            self._deadline.cancel()
        self.queue.clear()
        if self.raw is not None:
            self.raw.client_lost()
        cur = self.current
        if cur is not None:
            cur.client_lost()


# after the class, not as a decorator: a compiled build (mypyc) keeps a decorated class out of
# native code
classImplements(ProxyProtocol, IHalfCloseableProtocol)
