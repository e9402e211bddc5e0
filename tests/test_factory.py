"""The factory's life (fwproxy.factory): filters start and stop, and their ``stopFilter()``
Deferreds are waited for — on shutdown and on reload — at most ``timeouts.drain`` seconds."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer

from fwproxy.config import loads
from fwproxy.factory import ProxyFactory
from fwproxy.interfaces import IFilterLifecycle, ITransactionObserver

CONFIG = """
[acl.localhost]
src = ["127.0.0.0/8"]
[access]
rules = ["allow localhost", "deny all"]
[timeouts]
drain = 7
"""


@implementer(IFilterLifecycle, ITransactionObserver)
class Slow:
    """A filter whose stop takes a while (flushing a remote log, say)."""

    def __init__(self) -> None:
        self.started = 0
        self.stopping: Deferred[None] | None = None

    def startFilter(self) -> None:
        self.started += 1

    def stopFilter(self) -> Deferred[None]:
        self.stopping = Deferred()
        return self.stopping

    def reopen(self) -> None:
        pass

    def transactionFinished(self, record: Any) -> None:
        pass


def _fired(d: Deferred[Any]) -> list[object]:
    out: list[object] = []
    d.addBoth(out.append)
    return out


def _running(filters: list[object]) -> tuple[ProxyFactory, MemoryReactorClock]:
    clock = MemoryReactorClock()
    factory = ProxyFactory(loads(CONFIG), clock, filters=filters)
    factory.doStart()
    return factory, clock


def test_drain_waits_for_stop_filter() -> None:
    slow = Slow()
    factory, clock = _running([slow])
    assert slow.started == 1
    factory.doStop()  # the last port stopped: no connection, the filters stop now
    assert slow.stopping is not None
    drained = _fired(factory.drain(7))
    assert drained == []
    slow.stopping.callback(None)
    assert len(drained) == 1


def test_drain_gives_up_on_a_filter_after_the_drain_timeout() -> None:
    slow = Slow()
    factory, clock = _running([slow])
    factory.doStop()
    drained = _fired(factory.drain(7))
    clock.advance(6.9)
    assert drained == []
    clock.advance(0.2)
    assert len(drained) == 1


def test_reload_waits_for_the_replaced_filters() -> None:
    slow = Slow()
    factory, clock = _running([slow])
    factory.numPorts = 1  # as a listening port does
    stopped = _fired(factory.reconfigure(loads(CONFIG)))
    assert slow.stopping is not None and stopped == []
    slow.stopping.callback(None)
    assert len(stopped) == 1


def test_a_filter_whose_stop_fails_is_logged_and_not_waited_for() -> None:
    @implementer(IFilterLifecycle)
    class Broken:
        def startFilter(self) -> None:
            pass

        def stopFilter(self) -> None:
            raise RuntimeError("cannot flush")

        def reopen(self) -> None:
            pass

    from twisted.logger import globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        factory, clock = _running([Broken()])
        factory.doStop()
        assert len(_fired(factory.drain(7))) == 1
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert any(e.get("log_failure") and "stopping filter" in e["log_format"] for e in events)
