# -*- test-case-name: tests.test_protocol -*-
"""The client side: :class:`ProxyFactory` and the :class:`ProxyProtocol` it makes per connection.

The protocol only moves bytes: it feeds what the client sends to a
:class:`fwproxy.http1.RequestReader`, queues the events, and hands them one at a time to the
current transaction (:mod:`fwproxy.relay`, :mod:`fwproxy.tunnel`, or the proxy's own answers in
:mod:`fwproxy.transaction`). An event the transaction cannot take yet (a pipelined request, a
body chunk while the upstream is still being connected) stays queued and the client is not read
from until it is taken: at most one read's worth of data is ever buffered per connection.

Reading from the client is paused for several independent reasons (queued events, a full
upstream write buffer, a pending connection filter); it resumes only when none is left.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from fwproxy import chain as _chain
from fwproxy.acl import client_ip
from fwproxy.auth import Authenticator, HtpasswdChecker, make_portal
from fwproxy.chain import FilterChain
from fwproxy.config import AuthConfig, Config
from fwproxy.http1 import END, ERROR, HEAD, REST, ProtocolError, RequestHead, RequestReader
from fwproxy.message import Response
from fwproxy.plugins import FilterContext, find_factory
from fwproxy.relay import RelayTransaction
from fwproxy.resolver import ReactorResolver
from fwproxy.timer import Deadline
from fwproxy.transaction import LocalTransaction, Transaction
from fwproxy.tunnel import ConnectTransaction, Tunnel, TunnelUpstream
from fwproxy.upstream import UpstreamPool

log = Logger()


_REASONS = {"queue": 1, "upstream": 2, "filter": 4, "connection-filter": 8}


@implementer(IPushProducer)
class _ReasonProducer:
    """Lets a consumer (an upstream transport) pause the client under one named reason."""

    def __init__(self, proto: ProxyProtocol, reason: str) -> None:
        self._proto = proto
        self._reason = reason

    def pauseProducing(self) -> None:
        self._proto.pause_reason(self._reason)

    def resumeProducing(self) -> None:
        self._proto.resume_reason(self._reason)

    def stopProducing(self) -> None:
        self._proto.transport.loseConnection()


@implementer(IHalfCloseableProtocol)
class ProxyProtocol(Protocol):
    """One client connection."""

    factory: ProxyFactory
    #: a TCP (or TLS, UNIX, PROXY-protocol) transport: IPushProducer and IHalfCloseable too
    transport: Any

    def __init__(self, factory: ProxyFactory) -> None:
        self.factory = factory
        limits = factory.config.limits
        self.reader = RequestReader(limits.max_header_size, limits.max_headers, limits.max_target)
        # a list, not a deque: it holds a few events at most, and an idle connection (a tunnel)
        # should cost as little memory as possible
        self.queue: list[tuple[int, Any]] = []
        self.current: Transaction | None = None
        self.tunnel: Tunnel | None = None
        self.producer = _ReasonProducer(self, "upstream")
        self.client: tuple[str, int] = ("", 0)
        self.local: tuple[str, int] = ("", 0)
        self._pauses = 0  # a bit per reason (see _REASONS)
        self._raw = False
        self._read_closed = False
        self._processing = False
        self._closing = False
        self._idle_mode = True
        self._identified = False
        self._held: list[bytes] | None = None
        self._client_counted = ""
        self.timer: Any = None

    # -- connection ------------------------------------------------------------------------
    def connectionMade(self) -> None:
        t = self.transport
        self._address()
        try:
            t.setTcpNoDelay(True)  # type: ignore[union-attr]
        except (AttributeError, OSError):
            pass
        refusal = self.factory.admit(self) or self.factory.admit_client(self)
        if refusal is not None:
            self._refuse(refusal)
            return
        self.timer = Deadline(
            self.factory.reactor, self.factory.config.timeouts.request_header, self._idle_timeout
        )

    def _address(self) -> None:
        t = self.transport
        peer, host = t.getPeer(), t.getHost()  # type: ignore[union-attr]
        self.client = (getattr(peer, "host", "") or "", getattr(peer, "port", 0) or 0)
        self.local = (getattr(host, "host", "") or "", getattr(host, "port", 0) or 0)

    def _refuse(self, answer: bytes) -> None:
        self._closing = True
        self.transport.write(answer)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _identify(self) -> bool:
        """First bytes from the client: from here its address is final (a PROXY-protocol
        listener has parsed its header by now). Per-client limits and connection filters run
        here. Returns whether the bytes may be read now."""
        self._identified = True
        before = self.client[0]
        self._address()
        if self.client[0] != before:
            # a PROXY-protocol header named the real client: count it, not the balancer
            self.factory.forget_client(self)
            refusal = self.factory.admit_client(self)
            if refusal is not None:
                self._refuse(refusal)
                return False
        hooks = self.factory.chain.connection
        if not hooks:
            return True

        def decide(ok: object) -> None:
            held, self._held = self._held, None
            if ok is False:
                self._close()
                return
            self.resume_reason("connection-filter")
            for data in held or ():
                self.dataReceived(data)
            if self._read_closed and not self._closing:
                self.readConnectionLost()

        def failed(f: Failure) -> None:
            log.failure("fwproxy: connection filter failed", f)
            self._close()

        try:
            result = _chain.run(
                [lambda *a, h=h: _bool_or_none(h(*a)) for h in hooks], self.client, self.local
            )
        except Exception:
            failed(Failure())
            return False
        if isinstance(result, Deferred):
            self._held = []
            self.pause_reason("connection-filter")
            result.addCallbacks(decide, failed)
            return False
        if result is False:
            self._close()
            return False
        return True

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.client_data(data)
            return
        if self._closing:
            return
        if not self._identified and not self._identify():
            if self._held is not None:
                self._held.append(data)
            return
        if self._held is not None:
            self._held.append(data)
            return
        if self._raw:
            self.queue.append((REST, data))
        else:
            if self._idle_mode and self.current is None:
                # the first byte of a request head: from now on, the head must arrive in time
                self._idle_mode = False
                self.timer.restart(
                    self.factory.config.timeouts.request_header, self._header_timeout
                )
            events = self.reader.feed(data)
            if events:
                for kind, _ in events:
                    if kind == REST:
                        self._raw = True
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
            self.pause_reason("queue")
        else:
            self.resume_reason("queue")
            if self._read_closed and self.current is None:
                self._close()

    def _start(self, head: RequestHead) -> None:
        # the request-header deadline keeps running: the transaction re-arms the timer for its
        # own phases; until it does (a filter's Deferred may be pending), the request must be
        # decided within what is left of it
        self._idle_mode = False
        txn: Any
        if head.method == b"CONNECT":
            txn = ConnectTransaction(self, head)
        elif head.target[:1] == b"/" or head.target == b"*":
            txn = LocalTransaction(self, head)
        else:
            txn = RelayTransaction(self, head)
        self.current = txn
        try:
            txn.start()
        except Exception:
            txn.fail(Failure())

    def _protocol_error(self, error: ProtocolError) -> None:
        """A request that cannot be parsed: answer it and close."""
        head = RequestHead(b"NONE", b"error:invalid-request", "1.1", [], False, False, None)
        txn = Transaction(self, head)
        self.current = txn
        txn.answer(Response.text(error.status, f"fwproxy: {error.message}"), close=True)

    def transaction_finished(self, txn: Transaction, keep_alive: bool) -> None:
        """Called by the current transaction when it has ended."""
        if txn is not self.current:
            return
        self.current = None
        if txn.logged:
            self.factory.observe(txn)
        raw_done = self._raw and not any(k == HEAD for k, _ in self.queue)
        if not keep_alive or raw_done or self.tunnel is not None or self.factory.draining:
            self._close()
            return
        if self.reader.head_started:
            # part of the next head is already here: it must complete in time
            self._idle_mode = False
            self.timer.restart(self.factory.config.timeouts.request_header, self._header_timeout)
        else:
            self._idle_mode = True
            self.timer.restart(self.factory.config.timeouts.client_idle, self._idle_timeout)
        self.process()

    def start_tunnel(
        self, txn: ConnectTransaction, upstream: TunnelUpstream, idle: float
    ) -> Tunnel:
        """The CONNECT succeeded: splice the client to ``upstream``."""
        tunnel = Tunnel(txn, upstream, idle)
        self.tunnel = tunnel
        early = [p for k, p in self.queue if k == REST]
        self.queue.clear()
        self._pauses = 0
        # the HTTP side of this connection is over: let go of what it held
        self.reader = None  # type: ignore[assignment]
        txn.release_head()
        for data in early:
            if data:
                tunnel.client_data(data)
        self.transport.resumeProducing()  # type: ignore[union-attr]
        if self._read_closed:
            tunnel.client_eof()
        return tunnel

    # -- timeouts --------------------------------------------------------------------------
    def _idle_timeout(self) -> None:
        if self.current is None and self.tunnel is None:
            self._close()

    def _header_timeout(self) -> None:
        if self.current is not None:
            self.current.stalled()
        elif self.tunnel is None:
            head = RequestHead(b"NONE", b"error:request-timeout", "1.1", [], False, False, None)
            txn = Transaction(self, head)
            self.current = txn
            txn.answer(Response.text(408, "fwproxy: request header timeout"), close=True)

    # -- flow control ----------------------------------------------------------------------
    def pause_reason(self, reason: str) -> None:
        """Stop reading from the client for ``reason`` ("queue", "upstream", "filter",
        "connection-filter"); reading resumes when no reason is left."""
        if not self._pauses and self.transport is not None:
            self.transport.pauseProducing()
        self._pauses |= _REASONS[reason]

    def resume_reason(self, reason: str) -> None:
        bit = _REASONS[reason]
        if self._pauses & bit:
            self._pauses &= ~bit
            if not self._pauses and self.transport is not None and not self._closing:
                self.transport.resumeProducing()

    # -- closing ---------------------------------------------------------------------------
    def _close(self) -> None:
        if not self._closing:
            self._closing = True
            self.queue.clear()
            if self.timer is not None:
                self.timer.cancel()
            self.transport.loseConnection()  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        self._read_closed = True
        if self._held is not None:
            return  # a connection filter is deciding: handled once the held bytes are read
        if self.tunnel is not None:
            self.tunnel.client_eof()
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

    def writeConnectionLost(self) -> None:
        pass

    def drain(self) -> None:
        """The proxy is shutting down: close now if idle, else after the current transaction."""
        if self.current is None and self.tunnel is None and not self.queue:
            self._close()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._closing = True
        self.factory.forget(self)
        if self.timer is not None:
            self.timer.cancel()
        self.queue.clear()
        if self.tunnel is not None:
            self.tunnel.client_lost()
        cur = self.current
        if cur is not None:
            cur.client_lost()


def _bool_or_none(value: Any) -> Any:
    # chain.run stops at the first non-None answer: "True" (serve) must let later hooks run
    if isinstance(value, Deferred):
        return value.addCallback(lambda v: None if v is True else v)
    return None if value is True else value


def build_filters(config: Config, context: FilterContext) -> list[object]:
    """Build every configured filter, built-ins first, in order."""
    return [find_factory(s.name).build(s.options, context) for s in config.all_filters]


class ProxyFactory(Factory):
    """Makes a :class:`ProxyProtocol` per client connection; works with any stream endpoint.

    :param config: the validated :class:`fwproxy.config.Config`.
    :param reactor: the reactor (IReactorTime and IReactorTCP at least); tests pass a
        ``MemoryReactorClock``.
    :param filters: the filters to run instead of building them from ``config``.
    :param resolver: an :class:`fwproxy.interfaces.IResolver` (default: the reactor's).
    :param portal: a ``twisted.cred`` Portal checking ``IUsernamePassword`` credentials for
        ``proxy_auth`` ACLs (default: one over ``[auth] htpasswd``).
    """

    protocol = ProxyProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(
        self,
        config: Config,
        reactor: Any,
        filters: list[object] | None = None,
        resolver: Any = None,
        portal: Any = None,
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.resolver = resolver if resolver is not None else ReactorResolver(reactor)
        self.portal = portal
        self.context = self._make_context(config)
        if filters is None:
            filters = build_filters(config, self.context)
        self.chain = FilterChain(filters)
        self.pool = UpstreamPool(
            reactor,
            config.pool.max_idle_per_host,
            config.pool.idle_timeout,
            config.limits.max_upstream_per_host,
        )
        self.connections: set[ProxyProtocol] = set()
        self._per_client: dict[str, int] = {}
        self.max_connections = config.limits.max_connections or fd_budget()
        self.refused = 0
        self._refusal_logged = -1e9
        self.draining = False
        self._stop_when_idle = False
        self._drained: Deferred[None] | None = None
        #: (host, port) of every listening port, for forwarding-loop detection
        self.listening: list[tuple[str, int]] = self.context.listening

    # -- admission -------------------------------------------------------------------------
    def admit(self, proto: ProxyProtocol) -> bytes | None:
        """Count a new connection in, or return the answer to send before closing it (503)."""
        if len(self.connections) >= self.max_connections:
            return self._refusal("too many connections")
        self.connections.add(proto)
        return None

    def admit_client(self, proto: ProxyProtocol) -> bytes | None:
        """Count the connection against its client's address (known once it has sent bytes)."""
        limit = self.config.limits.max_connections_per_client
        if not limit:
            return None
        host = proto.client[0]
        if self._per_client.get(host, 0) >= limit:
            return self._refusal("too many connections from your address")
        self._per_client[host] = self._per_client.get(host, 0) + 1
        proto._client_counted = host
        return None

    def _refusal(self, why: str) -> bytes:
        self.refused += 1
        now = self.reactor.seconds()
        if now - self._refusal_logged > 10:
            self._refusal_logged = now
            log.warn(
                "fwproxy: refusing connections ({why}; {n} refused so far)", why=why, n=self.refused
            )
        body = f"fwproxy: {why}\n".encode()
        return (
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
        )

    def forget_client(self, proto: ProxyProtocol) -> None:
        host = proto._client_counted
        if host:
            proto._client_counted = ""
            n = self._per_client.get(host, 1) - 1
            if n > 0:
                self._per_client[host] = n
            else:
                self._per_client.pop(host, None)

    def forget(self, proto: ProxyProtocol) -> None:
        self.forget_client(proto)
        if proto in self.connections:
            self.connections.discard(proto)
            if not self.connections:
                if self._stop_when_idle:
                    self._stop_filters()
                if self._drained is not None:
                    d, self._drained = self._drained, None
                    d.callback(None)

    # -- lifecycle -------------------------------------------------------------------------
    def drain(self, timeout: float) -> Deferred[None]:
        """Stop taking new requests; fire when every connection has closed, or after
        ``timeout`` seconds, when the connections still open are cut (and logged)."""
        self.draining = True
        for proto in list(self.connections):
            proto.drain()
        d: Deferred[None] = Deferred()
        if not self.connections:
            d.callback(None)
            return d
        self._drained = d
        call = self.reactor.callLater(timeout, self._cut)
        d.addBoth(lambda r: (call.active() and call.cancel(), r)[1])
        return d

    def _cut(self) -> None:
        protos = list(self.connections)
        tunnels = sum(1 for p in protos if p.tunnel is not None)
        log.warn(
            "fwproxy: drain timeout: cutting {n} connection(s) still busy ({t} tunnel(s))",
            n=len(protos),
            t=tunnels,
        )
        for proto in protos:
            if proto.transport is not None:
                proto.transport.abortConnection()  # type: ignore[attr-defined]
        if self._drained is not None:
            d, self._drained = self._drained, None
            d.callback(None)

    def reconfigure(self, config: Config) -> None:
        """Use ``config`` for new transactions; those in flight finish as they started.

        :raise Exception: building the new filters failed; the old configuration stays.
        """
        context = self._make_context(config)
        context.listening = self.listening
        new_chain = FilterChain(build_filters(config, context))
        running = self.numPorts > 0
        if running:
            for f in new_chain.lifecycle:
                f.startFilter()  # type: ignore[attr-defined]
        old, self.chain = self.chain, new_chain
        self.config, self.context = config, context
        self.max_connections = config.limits.max_connections or fd_budget()
        self.pool.max_idle_per_host = config.pool.max_idle_per_host
        self.pool.idle_timeout = config.pool.idle_timeout
        self.pool.max_per_host = config.limits.max_upstream_per_host
        if running:
            for f in old.lifecycle:
                try:
                    f.stopFilter()  # type: ignore[attr-defined]
                except Exception:
                    log.failure("fwproxy: stopping filter {f!r}", f=f)

    def _make_context(self, config: Config) -> FilterContext:
        context = FilterContext(self.reactor, config, self.resolver)
        auth = config.auth
        portal = self.portal
        if portal is None and auth is not None and auth.htpasswd:
            portal = make_portal([HtpasswdChecker(auth.htpasswd, self.reactor)])
        if portal is not None:
            a = auth if auth is not None else AuthConfig()
            context.authenticator = Authenticator(
                portal, self.reactor, a.realm, a.cache_ttl, a.max_failures, a.failure_window
            )
        elif auth is not None:
            raise ValueError("[auth] has no htpasswd and no portal was given to ProxyFactory")
        return context

    def buildProtocol(self, addr: Any) -> ProxyProtocol:  # type: ignore[override]
        p = ProxyProtocol(self)
        p.factory = self
        return p

    def observe(self, txn: Transaction) -> None:
        observers = self.chain.observers
        if not observers:
            return
        record = txn.record()
        for observer in observers:
            try:
                observer(record)
            except Exception:
                log.failure("fwproxy: transaction observer {o!r} failed", o=observer)

    def is_self(self, addresses: list[str], port: int, local: tuple[str, int]) -> bool:
        """Whether ``addresses``:``port`` is this proxy (a forwarding loop)."""
        for a in addresses:
            if port == local[1] and _same_ip(a, local[0]):
                return True
            for host, lport in self.listening:
                if port != lport:
                    continue
                if _same_ip(a, host):
                    return True
                if host in ("0.0.0.0", "::", "") and _is_local(a, local[0]):
                    return True
        return False

    def startFactory(self) -> None:
        """The first listening port started: start the filters (open their files)."""
        for f in self.chain.lifecycle:
            f.startFilter()  # type: ignore[attr-defined]

    def stopFactory(self) -> None:
        """The last listening port stopped: close idle upstream connections, and stop the
        filters once the connections still open have ended (their transactions are logged)."""
        self.pool.close_all()
        if self.connections:
            self._stop_when_idle = True
            return
        self._stop_filters()

    def _stop_filters(self) -> None:
        self._stop_when_idle = False
        for f in self.chain.lifecycle:
            try:
                f.stopFilter()  # type: ignore[attr-defined]
            except Exception:
                log.failure("fwproxy: stopping filter {f!r}", f=f)

    def reopen_logs(self) -> None:
        for f in self.chain.lifecycle:
            f.reopen()  # type: ignore[attr-defined]


def fd_budget() -> int:
    """Client connections the file-descriptor limit allows: each may need an upstream too."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, ValueError, OSError):
        return 1024
    if soft == resource.RLIM_INFINITY:
        return 100_000
    return max(16, (soft - 64) // 2)


def _ip(a: str) -> Any:
    return client_ip(a.split("%", 1)[0])


def _same_ip(a: str, b: str) -> bool:
    x, y = _ip(a), _ip(b)
    return x is not None and x == y


def _is_local(a: str, local_host: str) -> bool:
    ip = _ip(a)
    return ip is not None and (ip.is_loopback or ip.is_unspecified or _same_ip(a, local_host))
