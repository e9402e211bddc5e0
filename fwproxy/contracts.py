# -*- test-case-name: tests.test_contracts -*-
"""What the parts of the core may use of each other, declared once.

A *transaction* (:mod:`fwproxy.relay`, :mod:`fwproxy.tunnel`, :mod:`fwproxy.local`) handles one
request from its head to its end. It is given two handles and may use nothing else:

- its :class:`ClientConnection` (the client protocol, :mod:`fwproxy.protocol`): write to the
  client, pause and resume reading from it by named reason, its deadline, finish, stream an
  upstream producer into it, or hand the connection over to raw bytes (a tunnel);
- the :class:`ProxyServices` (the factory, :mod:`fwproxy.factory`): configuration, clock and
  reactor, upstream pool, resolver, filter chain, routes (parent proxies), loop detection.

The client connection in turn sees its transaction only as a :class:`ClientTransaction` and, once
the connection carries raw bytes, a :class:`RawHandler`. A new kind of transaction (a peeked TLS
tunnel, an intercepted connection, an upgrade) implements these contracts and is chosen by
:mod:`fwproxy.dispatch`; neither the protocol class nor any other transaction changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

from twisted.internet.protocol import Protocol as StreamProtocol

from fwproxy.acl import ClientCert
from fwproxy.chain import FilterChain
from fwproxy.config import Config
from fwproxy.http1 import RequestHead
from fwproxy.record import TransactionRecord
from fwproxy.routing import Routes
from fwproxy.timer import Deadline
from fwproxy.upstream import UpstreamPool

#: why reading from the client is paused; reading resumes when no reason is left
PauseReason = Literal["queue", "upstream", "filter", "connection-filter"]


class Stream(Protocol):
    """A flow-controlled byte stream: what a tunnel splices and a relay streams from (a Twisted
    TCP, TLS or PROXY-protocol transport: ``ITransport``, ``IPushProducer``, ``IConsumer``,
    ``IHalfCloseableDescriptor``)."""

    def write(self, data: bytes) -> None: ...
    def registerProducer(self, producer: Any, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def loseConnection(self) -> None: ...
    def loseWriteConnection(self) -> None: ...
    def abortConnection(self) -> None: ...


class Clock(Protocol):
    """The reactor as transactions use it: time, timers and outgoing TCP connections."""

    def seconds(self) -> float: ...
    def callLater(self, delay: float, f: Callable[..., Any], *a: Any, **kw: Any) -> Any: ...
    def connectTCP(
        self, host: str, port: int, factory: Any, timeout: float = 30, bindAddress: Any = None
    ) -> Any: ...


class Resolver(Protocol):
    """:class:`fwproxy.interfaces.IResolver` as the core calls it."""

    def resolve(self, host: str) -> Any: ...


class ProxyServices(Protocol):
    """What a transaction may use of the proxy (provided by :class:`fwproxy.factory.ProxyFactory`).

    ``config`` and ``chain`` are replaced as a whole on reload: a transaction reads them when it
    needs them, and one that started before a reload keeps the filters it started with.
    """

    @property
    def config(self) -> Config: ...
    @property
    def reactor(self) -> Clock: ...
    @property
    def pool(self) -> UpstreamPool: ...
    @property
    def resolver(self) -> Resolver: ...
    @property
    def chain(self) -> FilterChain: ...
    @property
    def draining(self) -> bool: ...
    @property
    def routes(self) -> Routes:
        """How requests reach their destinations (``[routing]``) and the parents' health."""
        ...

    @property
    def listening(self) -> Sequence[tuple[str, int]]:
        """The proxy's listening ``(host, port)`` pairs (what ``to_self`` matches)."""
        ...

    def is_self(self, addresses: list[str], port: int, local: tuple[str, int]) -> bool:
        """Whether ``addresses``:``port`` is this proxy (a forwarding loop)."""
        ...

    def observe(self, record: TransactionRecord) -> None:
        """Tell the transaction observers (access log, metrics) about a finished transaction."""
        ...


class RawHandler(Protocol):
    """Takes a client connection's bytes once it has left HTTP (a CONNECT tunnel)."""

    def client_data(self, data: bytes) -> None: ...
    def client_eof(self) -> None: ...
    def client_lost(self) -> None: ...


class ClientConnection(Protocol):
    """What a transaction may use of its client connection (:class:`fwproxy.protocol.ProxyProtocol`)."""

    #: the client's and the proxy's ``(host, port)`` of this connection (behind a PROXY-protocol
    #: listener, the original client's)
    client: tuple[str, int]
    local: tuple[str, int]
    #: the client certificate a TLS listener verified on this connection, if any
    client_cert: ClientCert | None

    @property
    def deadline(self) -> Deadline:
        """The connection's one timer: a transaction re-arms it for its phases (connect, first
        byte, read, tunnel idle); the connection re-arms it when the transaction ends."""
        ...

    @property
    def stream(self) -> Stream:
        """The client's transport, to register an upstream as its producer (a relayed body, a
        tunnel) and to splice; writes go through :meth:`write`."""
        ...

    @property
    def upstream_producer(self) -> Any:
        """An ``IPushProducer`` pausing and resuming this client under the reason "upstream": the
        producer to register on an upstream transport a request body is written to."""
        ...

    def write(self, data: bytes) -> None:
        """Send ``data`` to the client (at once when the transport is idle)."""
        ...

    def pause(self, reason: PauseReason) -> None:
        """Stop reading from the client for ``reason``."""
        ...

    def resume(self, reason: PauseReason) -> None:
        """``reason`` is gone; reading resumes when no other reason is left."""
        ...

    def process(self) -> None:
        """Hand queued client events to the transaction again (it can take more now)."""
        ...

    def transaction_finished(self, txn: ClientTransaction, keep_alive: bool) -> None:
        """``txn`` has ended; keep the connection for the next request if ``keep_alive``."""
        ...

    def intercepted(self, kinds: Callable[[RequestHead], TransactionKind]) -> StreamProtocol:
        """A new client connection (a Twisted protocol, not connected yet) for the HTTP inside
        this connection's decrypted TLS (:mod:`fwproxy.bump`), its request heads dispatched by
        ``kinds``."""
        ...

    def switch_to_raw(self, handler: RawHandler) -> None:
        """Leave HTTP: from now on every byte from the client (including bytes already received
        behind the request head) goes to ``handler``; the connection's deadline stays."""
        ...


class ClientTransaction(Protocol):
    """What the client connection uses of its current transaction."""

    #: whether the finished transaction is logged (health checks are not)
    logged: bool
    #: the client has sent the whole request
    request_done: bool

    def start(self) -> None:
        """The request head has arrived: begin (filters, destination, upstream)."""
        ...

    def accepts(self, kind: int) -> bool:
        """Whether the next client event (:mod:`fwproxy.http1` BODY, END, ERROR, REST) can be
        taken now; if not it stays queued and the client is not read from."""
        ...

    def client_event(self, kind: int, payload: Any) -> None:
        """Take a client event that :meth:`accepts` said yes to."""
        ...

    def client_lost(self) -> None:
        """The client went away (or gave up mid-request)."""
        ...

    def stalled(self) -> None:
        """The connection's deadline expired while the transaction owned it."""
        ...

    def fail(self, failure: Any) -> None:
        """An unexpected error: log it, answer 500 if nothing was sent, else cut."""
        ...

    def record(self) -> TransactionRecord:
        """The log record of the finished transaction."""
        ...


class TransactionKind(Protocol):
    """Makes the transaction for a request head (a class, usually)."""

    def __call__(
        self, conn: ClientConnection, proxy: ProxyServices, head: RequestHead
    ) -> ClientTransaction: ...
