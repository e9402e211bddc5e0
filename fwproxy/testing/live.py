# -*- test-case-name: tests.test_testing -*-
"""Real proxies on loopback for ordinary blocking tests (urllib, curl, any HTTP client).

A :class:`ReactorThread` runs a reactor in a daemon thread; it is started once and never
restarted (a reactor cannot be), and every call into it goes through ``blockingCallFromThread``
or ``callFromThread``. :func:`start_proxy` builds a proxy in that thread from a configuration
(its ``listen`` replaced by an ephemeral port on 127.0.0.1) and the filters under test, listens,
and returns a :class:`LiveProxy`: its ``url``, the records of finished transactions, the
failures logged, and :meth:`LiveProxy.stop`, which closes the listener and the connections
still open and stops the filters. The pytest plugin (:mod:`fwproxy.testing.pytest_plugin`)
wraps all this in the ``fwproxy`` fixture.
"""

from __future__ import annotations

import atexit
import threading
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import blockingCallFromThread
from twisted.python.failure import Failure
from zope.interface import implementer

from fwproxy.config import Config
from fwproxy.interfaces import (
    IConnectFilter,
    IConnectionFilter,
    IFilterLifecycle,
    IRequestFilter,
    IResponseFilter,
    ITransactionObserver,
)
from fwproxy.record import TransactionRecord
from fwproxy.testing._proxy import (
    ProxyFactory,
    configured_filters,
    default_resolver,
    make_factory,
)
from fwproxy.testing.doubles import FailureLog
from fwproxy.testing.memory import ConfigLike, as_config

#: The default configuration of a live test proxy: clients on loopback may reach destinations
#: on loopback (a test's origin runs on 127.0.0.1, on any port, CONNECT included) and nothing
#: else; the embedded default, meant for production, denies loopback destinations.
LOOPBACK_CONFIG = """
[acl.loopback]
src = ["127.0.0.0/8", "::1/128"]

[access]
rules = ["deny to_linklocal", "allow loopback to_localhost", "deny all"]

[headers]
forwarded_for = "delete"
via = false
"""

#: Where a live proxy listens: an ephemeral port on 127.0.0.1.
EPHEMERAL = "tcp:0:interface=127.0.0.1"

_HOOKS = (
    IConnectionFilter,
    IRequestFilter,
    IConnectFilter,
    IResponseFilter,
    ITransactionObserver,
    IFilterLifecycle,
)


class RecordsTimeout(AssertionError, TimeoutError):
    """:meth:`LiveProxy.wait_for_records` gave up: fewer transactions finished in time."""


class NotAFilter(TypeError):
    """An object given as a filter provides none of the hook interfaces."""


def live_config(config: ConfigLike | None = None) -> Config:
    """``config`` (TOML text, a parsed TOML mapping, a :class:`Config`; default
    :data:`LOOPBACK_CONFIG`) as written, except that it listens on :data:`EPHEMERAL`.

    :raise fwproxy.config.ConfigError: the configuration is invalid.
    """
    source = "<fwproxy test config>"
    base = as_config(LOOPBACK_CONFIG if config is None else config, source)
    return base.with_listen([EPHEMERAL])


def check_filters(filters: Sequence[object]) -> None:
    """:raise NotAFilter: a filter provides none of the hook interfaces (the proxy would never
    call it: a missing ``@implementer`` is the usual cause)."""
    for i, f in enumerate(filters):
        if not any(hook.providedBy(f) for hook in _HOOKS):
            names = ", ".join(h.__name__ for h in _HOOKS)
            raise NotAFilter(
                f"filters[{i}]: {f!r} provides none of {names} (missing @implementer?)"
            )


class ReactorThread:
    """Runs ``reactor`` in a daemon thread, for code that blocks (tests) to use.

    :meth:`start` starts it once (later calls do nothing); it runs until :meth:`stop` or until
    the process exits, and cannot be started again after that. Get it with
    :func:`reactor_thread`, which makes one per reactor.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the reactor's thread; return once the reactor runs.

        :raise RuntimeError: the reactor runs elsewhere already, or has run and stopped.
        """
        with self._lock:
            if self._thread is not None:
                if not self._thread.is_alive():
                    raise RuntimeError("fwproxy.testing: the reactor thread has stopped")
                return
            if self.reactor.running:
                raise RuntimeError(
                    "fwproxy.testing: the reactor is already running in another thread "
                    "(trial or pytest-twisted?): live proxies need a reactor of their own"
                )
            started = threading.Event()
            self.reactor.callWhenRunning(started.set)
            thread = threading.Thread(
                target=self._run, args=(started,), name="fwproxy-reactor", daemon=True
            )
            self._thread = thread
            thread.start()
            started.wait(30)
            if self._error is not None or not self.reactor.running:
                raise RuntimeError(f"fwproxy.testing: the reactor did not start: {self._error}")
            atexit.register(self.stop)

    def _run(self, started: threading.Event) -> None:
        try:
            self.reactor.run(installSignalHandlers=False)
        except BaseException as e:  # ReactorNotRestartable, ...: reported by start()
            self._error = e
            started.set()

    def call(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``f`` in the reactor's thread and wait for its result (a Deferred's result
        when it returns one); its exception is raised here."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("fwproxy.testing: blocking call from the reactor's own thread")
        if not self.running:
            raise RuntimeError("fwproxy.testing: the reactor thread is not running")
        return blockingCallFromThread(self.reactor, f, *args, **kwargs)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the reactor and wait (up to ``timeout`` seconds) for its thread to end."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        self.reactor.callFromThread(self.reactor.stop)
        thread.join(timeout)


#: the one ReactorThread of each reactor (by id; the thread keeps its reactor alive): a reactor
#: runs once, so every user of a reactor must share its thread
_threads: dict[int, ReactorThread] = {}
_threads_lock = threading.Lock()


def reactor_thread(reactor: Any) -> ReactorThread:
    """The :class:`ReactorThread` running ``reactor``, started; the same one on every call."""
    with _threads_lock:
        thread = _threads.get(id(reactor))
        if thread is None:
            thread = _threads[id(reactor)] = ReactorThread(reactor)
    thread.start()
    return thread


class _Listener(Factory):
    """What the listening port is given: the proxy factory's protocols, and a list of them, so
    that stopping the proxy can close the connections still open."""

    noisy = False

    def __init__(self, proxy: ProxyFactory) -> None:
        self.proxy = proxy
        self.protocols: list[Protocol] = []

    def buildProtocol(self, addr: Any) -> Protocol:
        p = self.proxy.buildProtocol(addr)
        self.protocols = [*self.open_protocols(), p]
        return p

    def open_protocols(self) -> list[Protocol]:
        return [
            p
            for p in self.protocols
            if p.transport is None or getattr(p.transport, "connected", False)
        ]

    def startFactory(self) -> None:
        self.proxy.startFactory()


@implementer(ITransactionObserver)
class _WaitingRecorder:
    """Keeps the records (told in the reactor's thread) for other threads to read and wait on."""

    def __init__(self) -> None:
        self._records: list[TransactionRecord] = []
        self._changed = threading.Condition()

    def transactionFinished(self, record: TransactionRecord) -> None:
        with self._changed:
            self._records.append(record)
            self._changed.notify_all()

    def records(self) -> list[TransactionRecord]:
        with self._changed:
            return list(self._records)

    def wait(self, n: int, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self._records) >= n, timeout)


def _summary(r: TransactionRecord) -> str:
    return f"{r.method} {r.target} -> {r.status} {r.result}"


class LiveProxy:
    """A proxy listening on 127.0.0.1, run by a :class:`ReactorThread` (see :func:`start_proxy`).

    :ivar url: ``"http://127.0.0.1:PORT"``, for a client's proxy setting.
    :ivar port: the port it listens on.
    :ivar config: the configuration it runs (``listen`` as :data:`EPHEMERAL`).
    """

    def __init__(
        self,
        thread: ReactorThread,
        config: Config,
        filters: Sequence[object],
        resolver: Any,
        portal: Any,
        failures: FailureLog | None,
    ) -> None:
        self.config = config
        self.port = 0
        self.url = ""
        self._thread = thread
        self._filters = list(filters)
        self._resolver = resolver
        self._portal = portal
        self._own_log = failures is None
        self._failures = failures if failures is not None else FailureLog().open()
        self._recorder = _WaitingRecorder()
        self._listening: list[tuple[str, int]] = []
        self._listener: _Listener | None = None
        self._port: Any = None
        self._stopped = False

    # -- in the reactor's thread --------------------------------------------------------------
    def _listen(self) -> None:
        reactor = self._thread.reactor
        resolver = self._resolver if self._resolver is not None else default_resolver(reactor)
        built = configured_filters(
            self.config, reactor, resolver, self._portal, listening=self._listening
        )
        chain = [*built, *self._filters, self._recorder]
        factory = make_factory(self.config, reactor, chain, resolver, self._portal)
        self._listener = _Listener(factory)
        self._port = reactor.listenTCP(0, self._listener, interface="127.0.0.1")
        host = self._port.getHost()
        self._listening.append((host.host, host.port))
        self.port = host.port
        self.url = f"http://127.0.0.1:{self.port}"

    async def _stop(self, grace: float) -> None:
        reactor = self._thread.reactor
        listener = self._listener
        if self._port is not None:
            d = self._port.stopListening()
            if d is not None:
                await d
        if listener is None:
            return
        for p in listener.open_protocols():
            if p.transport is not None:
                p.transport.abortConnection()  # type: ignore[attr-defined]
        waited = 0.0
        while listener.open_protocols() and waited < grace:
            await deferLater(reactor, 0.01, lambda: None)
            waited += 0.01
        listener.proxy.stopFactory()

    # -- from the test's thread -----------------------------------------------------------------
    @property
    def records(self) -> list[TransactionRecord]:
        """The records of the transactions finished so far, in order (a copy)."""
        return self._recorder.records()

    @property
    def failures(self) -> list[Failure]:
        """Failures logged while this proxy ran (a filter that raised, an observer that
        raised) and not taken yet. Several proxies of one test share them."""
        return list(self._failures.failures)

    def take_failures(self) -> list[Failure]:
        """The failures logged so far, which are then forgotten (the ``fwproxy`` fixture fails
        a test that leaves any)."""
        return self._failures.take()

    def wait_for_records(self, n: int, timeout: float = 5.0) -> list[TransactionRecord]:
        """Wait until ``n`` transactions have finished; return every record so far.

        A client can see a response before the proxy has finished its transaction (the
        record is made once the last byte is written), so wait rather than read at once.

        :raise RecordsTimeout: (an ``AssertionError`` and a ``TimeoutError``) fewer than ``n``
            finished within ``timeout`` seconds.
        """
        if not self._recorder.wait(n, timeout):
            got = self.records
            message = (
                f"fwproxy: waited {timeout:g} s for {n} finished transaction(s), got "
                f"{len(got)}: {[_summary(r) for r in got]}"
            )
            failures = self.failures
            if failures:
                message += f"; {len(failures)} failure(s) logged, the last: {failures[-1].value!r}"
            raise RecordsTimeout(message)
        return self.records

    def opener(self) -> urllib.request.OpenerDirector:
        """A ``urllib`` opener that sends every request through this proxy (``https://`` ones
        through a CONNECT tunnel), even for hosts the ``no_proxy`` environment variable names
        (``127.0.0.1`` often is)."""
        return urllib.request.build_opener(
            urllib.request.ProxyHandler({}), _ThroughProxy(f"127.0.0.1:{self.port}")
        )

    def stop(self, grace: float = 5.0) -> None:
        """Stop listening, close the connections still open (after up to ``grace`` seconds for
        them to go) and stop the filters (``IFilterLifecycle.stopFilter``). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self._thread.call(lambda: ensureDeferred(self._stop(grace)))
        finally:
            if self._own_log:
                self._failures.close()

    def __enter__(self) -> LiveProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<LiveProxy {self.url or 'not listening'}>"


class _ThroughProxy(urllib.request.BaseHandler):
    """Sets the proxy on every request (``ProxyHandler`` skips ``no_proxy`` hosts); the
    handlers that run next connect to it (for ``https``, and tunnel through it)."""

    handler_order = 100

    def __init__(self, hostport: str) -> None:
        self.hostport = hostport

    def http_open(self, req: urllib.request.Request) -> None:
        req.set_proxy(self.hostport, "http")
        return None

    https_open = http_open


def start_proxy(
    thread: ReactorThread,
    config: ConfigLike | None = None,
    filters: Sequence[object] = (),
    resolver: Any = None,
    portal: Any = None,
    failures: FailureLog | None = None,
) -> LiveProxy:
    """Start a proxy in ``thread``'s reactor and return once it listens.

    :param config: see :func:`live_config`.
    :param filters: the filters under test; they run after the configured ones (built-ins
        and ``[[filters]]``), in order.
    :param resolver: an :class:`~fwproxy.interfaces.IResolver` (default: the reactor's).
    :param portal: a ``twisted.cred`` Portal for ``proxy_auth`` ACLs.
    :param failures: where logged failures are collected, shared with other proxies and
        closed by the caller (default: a log of the proxy's own, open until it stops).
    :raise fwproxy.config.ConfigError: the configuration is invalid.
    :raise NotAFilter: a filter provides no hook interface.
    """
    cfg = live_config(config)
    check_filters(filters)
    thread.start()
    proxy = LiveProxy(thread, cfg, filters, resolver, portal, failures)
    try:
        thread.call(proxy._listen)
    except BaseException:
        proxy.stop()
        raise
    return proxy
