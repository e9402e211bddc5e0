# -*- test-case-name: tests.test_relay -*-
"""The proxy's connections to origin servers, and the pool that keeps them alive between requests.

An :class:`UpstreamProtocol` only moves bytes: it feeds what arrives to a
:class:`fwproxy.http1.ResponseReader` and hands the events to its current *handler* (the relay
transaction using it). :class:`UpstreamPool` keeps idle connections per ``(scheme, host, port)``
(an ``http`` and an ``https`` connection to one ``host:port`` are never mixed; a parent proxy's
scheme says so too), at most ``max_idle_per_host`` of them, each for at most ``idle_timeout``
seconds; it connects only to addresses it is given (already resolved and checked). A TLS
connection (:mod:`fwproxy.origination`) counts as connected once its handshake has completed
and the certificate was verified; a failed handshake fails the connection attempt with
:class:`fwproxy.origination.TLSFailed`, whose message says why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from typing import Protocol as TypingProtocol

from mypy_extensions import mypyc_attr
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure
from zope.interface import classImplements

from fwproxy.http1 import Event, ResponseReader
from fwproxy.origination import Origination, TLSFailed
from fwproxy.timer import Deadline

#: ``(scheme, host, port)`` of the connections the pool keeps together
Key = tuple[str, str, int]
#: TLS to originate on a connection: the trust store and the name the certificate must have
TLSTo = tuple[Origination, str]


@mypyc_attr(allow_interpreted_subclasses=True)
class ConnectingProtocol(Protocol):
    """A client protocol that fires the Deferred :func:`connect_tcp` returned once connected
    (over TLS: once the handshake has completed, or fails it with :class:`TLSFailed`). A
    subclass that has more to do before it is ready (a CONNECT through a parent) overrides
    :meth:`_ready` and calls it when done."""

    _made: Deferred[Any] | None = None
    #: over TLS, until the handshake completes: the origination and the name verified
    _tls: TLSTo | None = None

    def connectionMade(self) -> None:
        if self._tls is None:
            self._ready()

    def handshakeCompleted(self) -> None:
        self._tls = None
        self._ready()

    def _ready(self) -> None:
        made, self._made = self._made, None
        if made is not None and not made.called:
            made.callback(self)

    def _never_ready(self, reason: Failure) -> bool:
        """The connection ended before it was ready (a TLS handshake failed): fail the
        attempt with the reason, and say so (the caller then has nothing else to do)."""
        made, self._made = self._made, None
        if made is None:
            return False
        if not made.called:
            tls = self._tls
            if tls is not None:
                reason = Failure(TLSFailed(tls[0].explain(reason, self.transport, tls[1])))
            made.errback(reason)
        return True


# after the class, not as a decorator: a compiled build (mypyc) keeps decorated classes out of
# native code
classImplements(ConnectingProtocol, IHandshakeListener)


class _ConnectingFactory(ClientFactory):
    noisy = False

    #: over TLS: what to verify
    tls: TLSTo | None = None

    def __init__(
        self,
        build: Callable[[], ConnectingProtocol],
        deferred: Deferred[Any],
        built: list[ConnectingProtocol],
    ) -> None:
        self.build: Callable[[], ConnectingProtocol] | None = build
        self.deferred: Deferred[Any] | None = deferred
        self.built: list[ConnectingProtocol] | None = built

    def buildProtocol(self, addr: Any) -> ConnectingProtocol:  # type: ignore[override]
        assert self.build is not None and self.built is not None
        proto = self.build()
        proto._made = self.deferred
        if self.tls is not None:
            proto._tls = self.tls
        self.built.append(proto)
        # the transport keeps its connector, and the connector this factory, for the whole
        # connection: let go of what is only needed to connect
        self.build = self.deferred = self.built = None
        return proto

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        d, self.deferred = self.deferred, None
        if d is not None and not d.called:
            d.errback(reason)


def connect_tcp(
    reactor: Any,
    address: str,
    port: int,
    build: Callable[[], ConnectingProtocol],
    timeout: float,
    tls: TLSTo | None = None,
) -> Deferred[Any]:
    """Connect to ``address`` (an IP literal: no name resolution here) and fire with the
    protocol ``build()`` made, once connected (and ready: see :class:`ConnectingProtocol`).
    Straight ``reactor.connectTCP``: no endpoint wrapper between the transport and the
    protocol. Cancelling stops the attempt, or drops a connection not ready yet.

    :param tls: ``(origination, name)``: originate TLS verified against ``name``; the Deferred
        fires once the handshake has completed, or fails with :class:`TLSFailed`.
    """
    connector: list[Any] = []
    # the protocol, once TCP is up (only the canceller holds this list: no reference cycle)
    built: list[ConnectingProtocol] = []

    def cancel(d: Deferred[Any]) -> None:
        if built:
            built.pop().transport.abortConnection()  # type: ignore[union-attr]
        elif connector:
            connector[0].stopConnecting()

    d: Deferred[Any] = Deferred(cancel)
    factory = _ConnectingFactory(build, d, built)
    if tls is None:
        connector.append(reactor.connectTCP(address, port, factory, timeout))
    else:
        factory.tls = tls
        connector.append(reactor.connectTCP(address, port, tls[0].wrap(factory, tls[1]), timeout))
    return d


class Handler(TypingProtocol):
    def upstream_events(self, events: list[Event]) -> None: ...
    def upstream_lost(self, reason: Failure) -> None: ...


@mypyc_attr(allow_interpreted_subclasses=True)
class UpstreamProtocol(ConnectingProtocol):
    """One connection to an origin; serves one request at a time."""

    transport: Any

    def __init__(self, pool: UpstreamPool, key: Key) -> None:
        self.pool = pool
        self.key = key
        self.handler: Handler | None = None
        self.reader: ResponseReader | None = None
        self.connected = False
        self.reused = False
        self.address = ""
        #: in the pool's idle list, waiting for a request
        self.idle = False
        self._idle_timer: Deadline | None = None

    def connectionMade(self) -> None:
        self.connected = True
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        host = getattr(peer, "host", "")
        self.address = (
            f"[{host}]:{peer.port}" if ":" in host else f"{host}:{getattr(peer, 'port', 0)}"
        )
        if self._tls is None:
            made, self._made = self._made, None
            if made is not None and not made.called:
                made.callback(self)

    def begin(self, handler: Handler, method: bytes) -> None:
        """Start a request/response exchange for ``handler``."""
        self.handler = handler
        self.reader = ResponseReader(method)

    def dataReceived(self, data: bytes) -> None:
        handler = self.handler
        if handler is None or self.reader is None:
            # bytes from an idle connection: it can't be trusted for the next request
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        events = self.reader.feed(data)
        if events:
            handler.upstream_events(events)

    def idle_expired(self) -> None:
        """The idle timer ran out: close if still idle (a reused connection ignores it)."""
        self.pool._expire(self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.connected = False
        self.idle = False
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._made is not None and self._never_ready(reason):
            return  # the attempt failed (a TLS handshake): the pool counted it closed
        self.pool._lost(self)
        handler, self.handler = self.handler, None
        if handler is not None and self.reader is not None:
            clean = reason is None or reason.check(ConnectionDone) is not None
            events = self.reader.eof(clean)
            if events:
                handler.upstream_events(events)
            else:
                handler.upstream_lost(reason)

    @property
    def reusable(self) -> bool:
        r = self.reader
        return bool(self.connected and r is not None and r.done and not r.extra and r.keep_alive)


@mypyc_attr(allow_interpreted_subclasses=True)
class UpstreamPool:
    """Idle keep-alive connections to origins, keyed by ``(scheme, host, port)``.

    :param origination: the verified TLS for ``https`` (default: the system trust store).
    """

    def __init__(
        self,
        reactor: Any,
        max_idle_per_host: int = 256,
        idle_timeout: float = 30.0,
        max_per_host: int = 0,
        origination: Origination | None = None,
    ) -> None:
        self._reactor = reactor
        self.origination = origination if origination is not None else Origination(reactor)
        self.max_idle_per_host = max_idle_per_host
        self.idle_timeout = idle_timeout
        self._idle: dict[Key, list[UpstreamProtocol]] = {}
        #: connections per key, connecting, busy or idle (for ``max_per_host``)
        self._open: dict[Key, int] = {}
        self._waiters: dict[Key, list[tuple[Deferred[UpstreamProtocol | None], list[str]]]] = {}
        #: at most this many connections per key (0: no limit); further requests wait
        self.max_per_host = max_per_host

    def idle_count(self, key: Key | None = None) -> int:
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(v) for v in self._idle.values())

    def take_idle(self, key: Key, addresses: list[str]) -> UpstreamProtocol | None:
        """An idle connection to ``key`` whose peer is one of ``addresses``, most recent first."""
        conns = self._idle.get(key)
        if not conns:
            return None
        for i in range(len(conns) - 1, -1, -1):
            conn = conns[i]
            if conn.address.rpartition(":")[0].strip("[]") in addresses:
                del conns[i]
                if not conns:
                    del self._idle[key]
                conn.idle = False  # its idle timer stays armed: it fires harmlessly, or not at all
                conn.reused = True
                return conn
        return None

    def at_limit(self, key: Key) -> bool:
        return bool(self.max_per_host) and self._open.get(key, 0) >= self.max_per_host

    def wait(self, key: Key, addresses: list[str]) -> Deferred[UpstreamProtocol | None]:
        """Wait for a connection to ``key`` to be released (fires with it) or closed (fires
        with None: there is room for a new one). Cancel the Deferred to stop waiting."""

        def cancel(d: Deferred[Any]) -> None:
            waiters = self._waiters.get(key, [])
            for i, (w, _) in enumerate(waiters):
                if w is d:
                    del waiters[i]
                    break

        d: Deferred[UpstreamProtocol | None] = Deferred(cancel)
        self._waiters.setdefault(key, []).append((d, addresses))
        return d

    def _wake(self, key: Key, conn: UpstreamProtocol | None) -> bool:
        waiters = self._waiters.get(key)
        if not waiters:
            return False
        d, addresses = waiters.pop(0)
        if not waiters:
            del self._waiters[key]
        if conn is not None and conn.address.rpartition(":")[0].strip("[]") not in addresses:
            self.discard(conn)
            conn = None
        if conn is not None:
            conn.reused = True
        d.callback(conn)
        return True

    def connect(
        self, key: Key, address: str, timeout: float, tls_name: str | None = None
    ) -> Deferred[UpstreamProtocol]:
        """A new connection to ``address`` (an IP literal), port ``key[2]``; over TLS verified
        against ``tls_name`` when given (it fails with :class:`TLSFailed` when it can't be)."""
        self._open[key] = self._open.get(key, 0) + 1
        tls = None if tls_name is None else (self.origination, tls_name)
        d = connect_tcp(
            self._reactor, address, key[2], lambda: UpstreamProtocol(self, key), timeout, tls
        )

        def failed(f: Any) -> Any:
            self._closed(key)
            return f

        return d.addErrback(failed)

    def _closed(self, key: Key) -> None:
        n = self._open.get(key, 1) - 1
        if n > 0:
            self._open[key] = n
        else:
            self._open.pop(key, None)
        self._wake(key, None)

    def release(self, conn: UpstreamProtocol) -> None:
        """Done with ``conn``: keep it idle if it is reusable and there is room, else close it."""
        conn.handler = None
        if not conn.reusable:
            self.discard(conn)
            return
        # a slow client may have paused it on the last write: idle connections must read, to
        # notice the origin closing them
        conn.transport.resumeProducing()  # type: ignore[union-attr]
        if self._wake(conn.key, conn):
            return
        if self.max_idle_per_host == 0:
            self.discard(conn)
            return
        conns = self._idle.setdefault(conn.key, [])
        if len(conns) >= self.max_idle_per_host:
            self.discard(conns.pop(0))
        conns.append(conn)
        conn.idle = True
        # One timer per connection, pushed back rather than rescheduled: a connection reused
        # on every request would otherwise make and cancel a DelayedCall per request.
        timer = conn._idle_timer
        if timer is None:
            conn._idle_timer = Deadline(self._reactor, self.idle_timeout, conn.idle_expired)
        elif timer.active:
            timer.touch()
        else:
            timer.restart(self.idle_timeout, conn.idle_expired)

    def _expire(self, conn: UpstreamProtocol) -> None:
        if conn.idle:
            self.discard(conn)

    @staticmethod
    def discard(conn: UpstreamProtocol) -> None:
        """Close ``conn`` rather than keep it (its exchange did not end cleanly)."""
        conn.handler = None
        if conn.transport is not None:
            conn.transport.loseConnection()

    @staticmethod
    def abort(conn: UpstreamProtocol) -> None:
        """Drop ``conn`` at once (a reset, not a close): its response is not wanted."""
        conn.handler = None
        if conn.transport is not None:
            conn.transport.abortConnection()

    def _lost(self, conn: UpstreamProtocol) -> None:
        self._closed(conn.key)
        conns = self._idle.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)
            if not conns:
                del self._idle[conn.key]

    def close_all(self) -> None:
        for conns in list(self._idle.values()):
            for conn in list(conns):
                self.discard(conn)
        self._idle.clear()
