# -*- test-case-name: tests.test_service -*-
"""An :class:`IService` that runs a proxy on the configured endpoints, for any Application.

``makeService(config)`` is what ``twistd fwproxy`` runs and what an embedding application adds
to its own service hierarchy. Listening happens in ``startService``; a port that cannot be
bound raises there, so ``twistd`` fails at start-up instead of running without a listener.

Stopping (SIGTERM under twistd) drains: the ports stop accepting, idle connections close, and
transactions in flight get up to ``timeouts.drain`` seconds to finish before they are cut. With
``signals=True`` (as under twistd), SIGHUP re-reads the configuration through ``reload`` (an
invalid one is logged and the running one kept) and SIGUSR1 re-opens the log files.
"""

from __future__ import annotations

import gc
import signal
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from fwproxy.config import Config, ConfigError
from fwproxy.factory import ProxyFactory
from fwproxy.workers import listen_reuseport

log = Logger()


class ProxyService(Service):
    """Listens on every ``config.listen`` endpoint with one shared :class:`ProxyFactory`.

    :param reload: returns a fresh :class:`Config` (for SIGHUP and :meth:`reload`).
    :param signals: install the SIGHUP and SIGUSR1 handlers.
    """

    def __init__(
        self,
        config: Config,
        reactor: Any = None,
        factory: ProxyFactory | None = None,
        reload: Callable[[], Config] | None = None,
        signals: bool = False,
        reuseport: bool = False,
        supervisor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.config = config
        self.reactor = reactor
        self.factory = factory if factory is not None else ProxyFactory(config, reactor)
        self.ports: list[Any] = []
        self._reload = reload
        self._signals = signals
        self._previous: dict[int, Any] = {}
        self._reuseport = reuseport
        #: a fwproxy.workers.Supervisor when this process has worker processes
        self.supervisor = supervisor
        self.worker_id = "0"

    def startService(self) -> None:
        super().startService()
        for description in self.config.listen:
            if self._reuseport:
                self._listening(listen_reuseport(self.reactor, description, self.factory))
                continue
            endpoint = serverFromString(self.reactor, description)
            d = endpoint.listen(self.factory)
            failure: list[Any] = []
            d.addCallbacks(self._listening, failure.append)
            if failure:  # bind errors are synchronous for TCP: fail start-up loudly
                failure[0].raiseException()
        if self.supervisor is not None:
            self.supervisor.start()
        if self._signals:
            handlers = (
                (signal.SIGHUP, self.reload),
                (signal.SIGUSR1, self.reopen),
                # a plain stop: drain, then exit 0 (Twisted's own handler would re-raise the
                # signal at exit, and container runtimes would see 143, not a clean exit)
                (signal.SIGTERM, self._terminate),
                (signal.SIGINT, self._terminate),
            )
            for signum, action in handlers:
                self._previous[signum] = signal.signal(
                    signum, lambda *_, a=action: self.reactor.callFromThread(a)
                )
            # This process is ours (twistd, a worker): move everything start-up made out of
            # the garbage collector's sight, so its full collections stay short (they set the
            # p99 latency under load).
            gc.collect()
            gc.freeze()

    def _listening(self, port: Any) -> None:
        self.ports.append(port)
        addr = port.getHost()
        host, portno = getattr(addr, "host", ""), getattr(addr, "port", 0)
        self.factory.listening.append((host, portno))
        log.info("fwproxy listening on {host}:{port}", host=host, port=portno)

    def _terminate(self) -> None:
        if self.reactor.running:
            self.reactor.stop()

    def reload(self) -> bool:
        """Re-read the configuration; keep the running one if the new one is invalid.
        Worker processes are told to reload too."""
        if self.supervisor is not None:
            self.supervisor.signal(signal.SIGHUP)
        if self._reload is None:
            log.warn("fwproxy: reload requested, but no configuration source to reload from")
            return False
        try:
            config = self._reload()
            self.factory.reconfigure(config)
        except ConfigError as e:
            log.error(
                "fwproxy: new configuration rejected, keeping the running one:\n{problems}",
                problems="\n".join(e.problems),
            )
            return False
        except Exception:
            log.failure("fwproxy: new configuration rejected, keeping the running one")
            return False
        if tuple(config.listen) != tuple(self.config.listen):
            log.warn("fwproxy: [proxy] listen changed: it takes effect on restart")
        for w in config.warnings:
            log.warn("warning: {w}", w=w)
        log.info("fwproxy: configuration reloaded from {source}", source=config.source)
        return True

    def reopen(self) -> None:
        """Re-open log files (after logrotate moved them), in the workers too."""
        if self.supervisor is not None:
            self.supervisor.signal(signal.SIGUSR1)
        self.factory.reopen_logs()
        log.info("fwproxy: log files re-opened")

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        if self._signals and getattr(self.reactor, "_exitSignal", None) in (
            signal.SIGTERM,
            signal.SIGINT,
        ):
            # Twisted's own handler ran (it replaces ours when the reactor starts): it would
            # re-raise the signal at exit. A drained stop is a clean exit: status 0.
            self.reactor._exitSignal = None
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        workers = self.supervisor.stop() if self.supervisor is not None else None
        ds = [d for d in (p.stopListening() for p in self.ports) if d is not None]
        self.ports = []
        if ds:
            await DeferredList(ds)
        busy = len(self.factory.connections)
        if busy:
            log.info("fwproxy: draining {n} connection(s)", n=busy)
        await self.factory.drain(self.config.timeouts.drain)
        if workers is not None:
            await workers


def makeService(
    config: Config,
    reactor: Any = None,
    reload: Callable[[], Config] | None = None,
    signals: bool = False,
    reuseport: bool = False,
    supervisor: Any = None,
) -> ProxyService:
    """An ``IService`` running a proxy with ``config``; add it to your ``Application``."""
    return ProxyService(
        config, reactor, reload=reload, signals=signals, reuseport=reuseport, supervisor=supervisor
    )
