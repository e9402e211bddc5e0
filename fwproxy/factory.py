# -*- test-case-name: tests.test_factory -*-
"""``ProxyFactory``: a protocol factory for any stream endpoint, and the proxy's services.

The factory makes a :class:`fwproxy.protocol.ProxyProtocol` per client connection and provides
what transactions may use of the proxy (:class:`fwproxy.contracts.ProxyServices`): the
configuration, the reactor, the upstream pool, the resolver, the filter chain, the routes
(``[routing]`` and the parents' health) and loop detection.
It also owns the proxy's life: filters start with the first listening port and stop (their
``stopFilter()`` Deferreds waited for, at most ``timeouts.drain`` seconds) once the last port has
stopped and the last connection has ended; :meth:`ProxyFactory.drain` ends connections for a
shutdown; :meth:`ProxyFactory.reconfigure` swaps in a new configuration and filter chain.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from fwproxy import selfcheck
from fwproxy.admission import Admission
from fwproxy.auth import Authenticator, HtpasswdChecker, make_portal
from fwproxy.chain import FilterChain
from fwproxy.config import AuthConfig, Config
from fwproxy.metrics import MeteredPool, ProxyMetrics, TimedResolver
from fwproxy.origination import Origination
from fwproxy.parents import ParentHealth
from fwproxy.plugins import FilterContext, find_factory
from fwproxy.protocol import ProxyProtocol
from fwproxy.record import TransactionRecord
from fwproxy.resolver import ReactorResolver
from fwproxy.routing import Routes, RoutingRules

log = Logger()

__all__ = ["ProxyFactory", "build_filters", "filter_context"]


def build_filters(config: Config, context: FilterContext) -> list[object]:
    """Build every configured filter, built-ins first, in order."""
    return [find_factory(s.name).build(s.options, context) for s in config.all_filters]


def filter_context(
    reactor: Any, config: Config, resolver: Any, portal: Any = None
) -> FilterContext:
    """The context filters are built with: the reactor, the configuration, the resolver and,
    when ``[auth]`` or ``portal`` asks for one, an authenticator for ``proxy_auth`` ACLs.

    :raise ValueError: ``[auth]`` without ``htpasswd`` and no ``portal``.
    """
    context = FilterContext(reactor, config, resolver)
    auth = config.auth
    if portal is None and auth is not None and auth.htpasswd:
        portal = make_portal([HtpasswdChecker(auth.htpasswd, reactor)])
    if portal is not None:
        a = auth if auth is not None else AuthConfig()
        context.authenticator = Authenticator(
            portal, reactor, a.realm, a.cache_ttl, a.max_failures, a.failure_window
        )
    elif auth is not None:
        raise ValueError("[auth] has no htpasswd and no portal was given to ProxyFactory")
    return context


def _log_stop_failure(failure: Failure, f: object) -> None:
    log.failure("fwproxy: stopping filter {f!r}", failure, f=f)


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
        #: this proxy's metrics (fwproxy.metrics), counted as transactions finish
        self.metrics = ProxyMetrics(self._gauges, lambda: self.admission.senders.refused)
        self.resolver = TimedResolver(
            resolver if resolver is not None else ReactorResolver(reactor), reactor, self.metrics
        )
        self.portal = portal
        self.context = self._make_context(config)
        if filters is None:
            filters = build_filters(config, self.context)
        self.chain = FilterChain(filters)
        self.pool = MeteredPool(
            self.metrics,
            reactor,
            config.pool.max_idle_per_host,
            config.pool.idle_timeout,
            config.limits.max_upstream_per_host,
            Origination(reactor, config.tls.ca_file),
        )
        limits = config.limits
        self.admission = Admission(
            reactor, limits.max_connections, limits.max_connections_per_client, self._idle
        )
        self.draining = False
        self._stop_when_idle = False
        self._drained: Deferred[None] | None = None
        #: filter chains being stopped (stopFilter Deferreds pending)
        self._stopping: list[Deferred[None]] = []
        #: (host, port) of every listening port, for loop detection and ``to_self``
        self.listening: list[tuple[str, int]] = self.context.listening
        #: the ``[routing]`` rules, and the parents' health (kept across reloads)
        self.routes = Routes(self.chain.upstream, self._rules(config), ParentHealth(reactor))

    @property
    def connections(self) -> set[ProxyProtocol]:
        """The open client connections."""
        return self.admission.connections

    def _gauges(self) -> tuple[int, int]:
        """``(connections, tunnels)`` open, for the metrics (read at scrape time)."""
        conns = self.admission.connections
        return len(conns), sum(1 for p in conns if p.busy_tunnel)

    def buildProtocol(self, addr: Any) -> ProxyProtocol:  # type: ignore[override]
        return ProxyProtocol(self, self.admission)

    # -- ProxyServices ---------------------------------------------------------------------
    def observe(self, record: TransactionRecord) -> None:
        self.metrics.transactionFinished(record)
        for observer in self.chain.observers:
            try:
                observer(record)
            except Exception:
                log.failure("fwproxy: transaction observer {o!r} failed", o=observer)

    def is_self(self, addresses: list[str], port: int, local: tuple[str, int]) -> bool:
        return selfcheck.is_self(addresses, port, self.listening, local)

    # -- life ------------------------------------------------------------------------------
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
        else:
            self._stop_filters(self.chain)

    def _idle(self) -> None:
        if self._stop_when_idle:
            self._stop_when_idle = False
            self._stop_filters(self.chain)
        if self._drained is not None:
            d, self._drained = self._drained, None
            d.callback(None)

    def _stop_filters(self, chain: FilterChain) -> None:
        """Stop ``chain``'s filters; their Deferreds are waited for by :meth:`drain`, for at
        most ``timeouts.drain`` seconds."""
        ds = [maybeDeferred(f.stopFilter) for f in chain.lifecycle]  # type: ignore[attr-defined]
        if not ds:
            return
        for f, d in zip(chain.lifecycle, ds, strict=True):
            d.addErrback(_log_stop_failure, f)
        done: Deferred[Any] = DeferredList(ds)
        done.addTimeout(self.config.timeouts.drain, self.reactor)
        if done.called:
            return  # every filter stopped at once
        self._stopping.append(done)

        def ended(result: Any) -> None:
            if isinstance(result, Failure):
                log.warn("fwproxy: filters still stopping after timeouts.drain; not waiting")
            self._stopping.remove(done)

        done.addBoth(ended)

    def drain(self, timeout: float) -> Deferred[None]:
        """Stop taking new requests; fire when every connection has closed (or after
        ``timeout`` seconds, when the connections still open are cut and logged) and the
        filters being stopped have stopped."""
        self.draining = True
        for proto in list(self.connections):
            proto.drain()
        d: Deferred[None] = Deferred()
        if not self.connections:
            d.callback(None)
        else:
            self._drained = d
            call = self.reactor.callLater(timeout, self._cut)
            d.addBoth(lambda r: (call.active() and call.cancel(), r)[1])
        return d.addCallback(lambda _: self._stopped())

    def _stopped(self) -> Deferred[Any]:
        if not self._stopping:
            return succeed(None)
        return DeferredList(list(self._stopping))

    def _cut(self) -> None:
        protos = list(self.connections)
        tunnels = sum(1 for p in protos if p.busy_tunnel)
        log.warn(
            "fwproxy: drain timeout: cutting {n} connection(s) still busy ({t} tunnel(s))",
            n=len(protos),
            t=tunnels,
        )
        for proto in protos:
            if proto.transport is not None:
                proto.transport.abortConnection()
        if self._drained is not None:
            d, self._drained = self._drained, None
            d.callback(None)

    def reconfigure(self, config: Config) -> Deferred[None]:
        """Use ``config`` for new transactions; those in flight finish as they started.

        :return: a Deferred that fires once the replaced filters have stopped (at most
            ``timeouts.drain`` seconds).
        :raise Exception: building the new filters failed; the old configuration stays.
        """
        context = self._make_context(config)
        origination = Origination(self.reactor, config.tls.ca_file)  # read again when used
        context.listening = self.listening
        new_chain = FilterChain(build_filters(config, context))
        running = self.numPorts > 0
        if running:
            for f in new_chain.lifecycle:
                f.startFilter()  # type: ignore[attr-defined]
        old, self.chain = self.chain, new_chain
        self.config, self.context = config, context
        limits = config.limits
        self.admission.configure(limits.max_connections, limits.max_connections_per_client)
        self.pool.max_idle_per_host = config.pool.max_idle_per_host
        self.pool.idle_timeout = config.pool.idle_timeout
        self.pool.max_per_host = limits.max_upstream_per_host
        self.pool.origination = origination
        self.routes = Routes(new_chain.upstream, self._rules(config), self.routes.health)
        if running:
            self._stop_filters(old)
        return self._stopped()

    def reopen_logs(self) -> None:
        for f in self.chain.lifecycle:
            f.reopen()  # type: ignore[attr-defined]

    def _rules(self, config: Config) -> RoutingRules:
        return RoutingRules(config.routing, self.reactor, self.resolver, self.listening)

    def _make_context(self, config: Config) -> FilterContext:
        return filter_context(self.reactor, config, self.resolver, self.portal)
