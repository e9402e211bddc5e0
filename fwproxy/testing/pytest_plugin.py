# -*- test-case-name: tests.test_testing -*-
"""The pytest plugin fwproxy registers (``pytest11`` entry point ``fwproxy``): fixtures for
testing filters.

``fwproxy``: a function, ``proxy = fwproxy(config=None, filters=[...])``, that starts a real
proxy on an ephemeral 127.0.0.1 port for blocking clients (see
:func:`fwproxy.testing.live.start_proxy`). Every proxy a test started is stopped when the test
ends (listener closed, connections closed, filters stopped), and the test fails if the proxies
logged a failure it did not take with ``proxy.take_failures()``. The reactor runs in a daemon
thread started by the first test that asks for a proxy, for the rest of the session.

``fwproxy_harness``: a function making in-memory :class:`~fwproxy.testing.memory.Harness`
proxies (no sockets, no real time); the test fails if one logged a failure it did not take.

The only module of :mod:`fwproxy.testing` that imports pytest.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from fwproxy.config import ConfigError
from fwproxy.testing.doubles import FailureLog
from fwproxy.testing.live import (
    LiveProxy,
    NotAFilter,
    ReactorThread,
    reactor_thread,
    start_proxy,
)
from fwproxy.testing.memory import ConfigLike, Harness, harnesses


def global_reactor_thread() -> ReactorThread:
    """The thread running the global reactor, started at the first call."""
    # an entry point: the one place the test kit uses the global reactor (importing it installs
    # the default reactor, so only when a test first asks for a proxy)
    from twisted.internet import reactor

    return reactor_thread(reactor)


class ProxyStarter:
    """What the ``fwproxy`` fixture gives a test: call it to start a proxy."""

    def __init__(self, thread: ReactorThread, failures: FailureLog) -> None:
        self._thread = thread
        self._failures = failures
        self.proxies: list[LiveProxy] = []

    def __call__(
        self,
        config: ConfigLike | None = None,
        filters: Sequence[object] = (),
        *,
        resolver: Any = None,
        portal: Any = None,
    ) -> LiveProxy:
        """Start a proxy running ``config`` (TOML text, a parsed mapping or a ``Config``;
        default: loopback clients to loopback destinations) with its ``listen`` replaced by an
        ephemeral 127.0.0.1 port, and ``filters`` after the built-ins."""
        try:
            proxy = start_proxy(
                self._thread, config, filters, resolver, portal, failures=self._failures
            )
        except ConfigError as e:
            pytest.fail("fwproxy: invalid config: " + "; ".join(e.problems), pytrace=False)
        except NotAFilter as e:
            pytest.fail(f"fwproxy: {e}", pytrace=False)
        self.proxies.append(proxy)
        return proxy

    def stop_all(self) -> None:
        """Stop every proxy, even when stopping one of them raises (then raise that)."""
        errors = []
        for proxy in reversed(self.proxies):
            try:
                proxy.stop()
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]


@pytest.fixture
def fwproxy() -> Iterator[ProxyStarter]:
    """Start real proxies on 127.0.0.1: ``proxy = fwproxy(config=..., filters=[...])``."""
    failures = FailureLog().open()
    starter = ProxyStarter(global_reactor_thread(), failures)
    try:
        yield starter
        starter.stop_all()
        gc.collect()  # a Deferred lost with an unhandled error logs it now, not in a later test
    finally:
        failures.close()
    if failures.failures:
        pytest.fail(
            f"fwproxy: {len(failures.failures)} failure(s) logged and not taken with "
            f"proxy.take_failures():\n{failures.tracebacks()}",
            pytrace=False,
        )


@pytest.fixture
def fwproxy_harness() -> Iterator[Callable[..., Harness]]:
    """Make in-memory proxies: ``harness = fwproxy_harness(config, filters=[...])``."""
    with harnesses() as make:
        yield make
