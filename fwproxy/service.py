# -*- test-case-name: tests.test_service -*-
"""An :class:`IService` that runs a proxy on the configured endpoints, for any Application.

``makeService(config)`` is what ``twistd fwproxy`` runs and what an embedding application adds
to its own service hierarchy. Listening happens in ``startService``; a port that cannot be
bound raises :class:`ListenError` there (naming the endpoint and the cause), so the process fails
at start-up instead of running without a listener; :class:`Foreground` turns that into one line
on standard error and exit status 1 for the command line.

Stopping (SIGTERM under twistd) drains: the ports stop accepting, idle connections close, and
transactions in flight get up to ``timeouts.drain`` seconds to finish before they are cut. With
``signals=True`` (as under twistd), SIGHUP re-reads the configuration through ``reload`` (an
invalid one is logged and the running one kept) and SIGUSR1 re-opens the log files. With
``[proxy] watch_config = true``, a change of the configuration file (a ConfigMap update) is a
SIGHUP too (:mod:`fwproxy.watch`).

``ssl:`` listeners are fwproxy's own (:mod:`fwproxy.tls`): a reload also re-reads their key
and certificate files and ``[tls]``, for new connections; files that cannot be used reject the
reload as an invalid configuration does.
"""

from __future__ import annotations

import gc
import signal
import sys
from collections.abc import Callable
from typing import IO, Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure

from fwproxy import tls
from fwproxy.config import DEFAULT_NAME, Config, ConfigError
from fwproxy.factory import ProxyFactory
from fwproxy.reuseport import listen_reuseport
from fwproxy.supervisor import Supervisor
from fwproxy.twisted_private import forget_exit_signal
from fwproxy.watch import ConfigWatcher

log = Logger()


class ListenError(Exception):
    """The proxy cannot listen on ``description``: ``str()`` says where and why, in one line."""

    def __init__(self, description: str, cause: str) -> None:
        super().__init__(f"cannot listen on {description}: {cause}")
        self.description = description
        self.cause = cause

    @classmethod
    def from_exception(cls, description: str, error: BaseException) -> ListenError:
        """From Twisted's ``CannotListenError`` (or an ``OSError``): the cause as the system says
        it, e.g. "address already in use"."""
        cause: object = error
        if isinstance(error, CannotListenError) and error.socketError is not None:
            cause = error.socketError
        text = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
        text = text or type(cause).__name__
        return cls(description, text[:1].lower() + text[1:])


class ProxyService(Service):
    """Listens on every ``config.listen`` endpoint with one shared :class:`ProxyFactory`.

    :param reload: returns a fresh :class:`Config` (for SIGHUP and :meth:`reload`).
    :param signals: this process is the proxy's own (twistd, a worker): install the SIGHUP,
        SIGUSR1 and SIGTERM handlers.
    :param reuseport: listen on ``tcp:`` endpoints with ``SO_REUSEPORT`` (``--workers``).
    :param supervisor: the worker processes to start, signal and stop with this service.
    """

    def __init__(
        self,
        config: Config,
        reactor: Any,
        factory: ProxyFactory | None = None,
        reload: Callable[[], Config] | None = None,
        signals: bool = False,
        reuseport: bool = False,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.factory = factory if factory is not None else ProxyFactory(config, reactor)
        self.ports: list[Any] = []
        self._reload = reload
        self._signals = signals
        self._previous: dict[int, Any] = {}
        self._reuseport = reuseport
        self.supervisor = supervisor
        #: the TLS side of each ``ssl:`` listener, for reloads
        self.tls: list[tls.ListenerTLS] = []
        #: polls the configuration file when ``[proxy] watch_config`` is on
        self.watcher: ConfigWatcher | None = None

    def startService(self) -> None:
        """Listen on every endpoint (or raise :class:`ListenError`, listening on none), then
        start the workers and install the signal handlers."""
        super().startService()
        for description in self.config.listen:
            try:
                self._listening(self._listen(description))
            except (CannotListenError, OSError, tls.TLSError) as e:
                self.running = 0
                for port in self.ports:
                    port.stopListening()
                self.ports = []
                self.tls = []
                if isinstance(e, tls.TLSError):
                    raise ListenError(description, str(e)) from None
                raise ListenError.from_exception(description, e) from e
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
        self._watch(self.config)

    def _listen(self, description: str) -> Any:
        if self._reuseport:
            return listen_reuseport(self.reactor, description, self.factory)
        found = tls.server_endpoint(self.reactor, description, self.config.tls)
        if found is not None:
            endpoint, listener = found
            self.tls.append(listener)
        else:
            endpoint = serverFromString(self.reactor, description)
        d = endpoint.listen(self.factory)
        if not d.called:  # bind errors are synchronous for every stream endpoint Twisted has
            d.addCallbacks(self._listening, self._late_failure, errbackArgs=(description,))
            return None
        result: list[Any] = []
        d.addBoth(result.append)
        if isinstance(result[0], Failure):
            result[0].raiseException()
        return result[0]

    def _late_failure(self, failure: Failure, description: str) -> None:
        log.error("fwproxy: {e}", e=ListenError.from_exception(description, failure.value))

    def _listening(self, port: Any) -> None:
        if port is None:
            return
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
            contexts = [listener.prepare(config.tls) for listener in self.tls]
            self.factory.reconfigure(config)
        except tls.TLSError as e:
            log.error(
                "fwproxy: new configuration rejected, keeping the running one:\n{problem}",
                problem=str(e),
            )
            return False
        except ConfigError as e:
            log.error(
                "fwproxy: new configuration rejected, keeping the running one:\n{problems}",
                problems="\n".join(e.problems),
            )
            return False
        except Exception:
            log.failure("fwproxy: new configuration rejected, keeping the running one")
            return False
        for listener, context in zip(self.tls, contexts, strict=True):
            listener.use(context)
            log.info(
                "fwproxy: {listen}: TLS key and certificate re-read ({cert})",
                listen=listener.listen.description,
                cert=context.certificate,
            )
        self._watch(config)
        if tuple(config.listen) != tuple(self.config.listen):
            log.warn("fwproxy: [proxy] listen changed: it takes effect on restart")
        for w in config.warnings:
            log.warn("warning: {w}", w=w)
        log.info("fwproxy: configuration reloaded from {source}", source=config.source)
        return True

    def _watch(self, config: Config) -> None:
        """Watch the configuration file as ``config`` says: only in the process SIGHUP goes
        to (a ``--workers`` worker's reloads come from its twistd process)."""
        worker = self._reuseport and self.supervisor is None
        wanted = config.watch_config and config.source != DEFAULT_NAME and not worker
        if wanted and self._reload is not None and self.watcher is None:
            self.watcher = ConfigWatcher(config.source, self.reactor, self.reload)
            self.watcher.start()
        elif not wanted and self.watcher is not None:
            self.watcher.stop()
            self.watcher = None

    def reopen(self) -> None:
        """Re-open log files (after logrotate moved them), in the workers too."""
        if self.supervisor is not None:
            self.supervisor.signal(signal.SIGUSR1)
        self.factory.reopen_logs()
        log.info("fwproxy: log files re-opened")

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        if self._signals:
            # Twisted's own handler ran (it replaces ours when the reactor starts): it would
            # re-raise the signal at exit. A drained stop is a clean exit: status 0.
            forget_exit_signal(self.reactor, (signal.SIGTERM, signal.SIGINT))
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
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


class Foreground(MultiService):
    """The service of a proxy run from the command line (``twistd -n fwproxy``, ``fwproxy
    run``, a worker): if it cannot listen, the process ends with one line on ``stderr`` (the
    process's own, not twistd's log) and exit status 1, instead of a traceback."""

    def __init__(self, proxy: IService, stderr: IO[str] | None = None) -> None:
        super().__init__()
        proxy.setServiceParent(self)
        self._stderr = stderr

    def startService(self) -> None:
        try:
            super().startService()
        except ListenError as e:
            self.running = 0
            stderr = self._stderr or sys.__stderr__ or sys.stderr
            stderr.write(f"fwproxy: {e}\n")
            stderr.flush()
            raise SystemExit(1) from None


def makeService(
    config: Config,
    reactor: Any = None,
    reload: Callable[[], Config] | None = None,
    signals: bool = False,
    reuseport: bool = False,
    supervisor: Supervisor | None = None,
) -> ProxyService:
    """An ``IService`` running a proxy with ``config``; add it to your ``Application``.

    Without ``reactor``, the global reactor (this is an entry point, for ``.tac`` files)."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    return ProxyService(
        config, reactor, reload=reload, signals=signals, reuseport=reuseport, supervisor=supervisor
    )
