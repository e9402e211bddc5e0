"""fwproxy.timer.Deadline on a MemoryReactorClock: when it fires, and how cheaply."""

from __future__ import annotations

import pytest
from twisted.internet.testing import MemoryReactorClock

from fwproxy.timer import Deadline


class Calls:
    def __init__(self, clock: MemoryReactorClock) -> None:
        self.clock = clock
        self.times: list[float] = []

    def __call__(self) -> None:
        self.times.append(self.clock.seconds())


def make(seconds: float = 10.0) -> tuple[MemoryReactorClock, Calls, Deadline]:
    clock = MemoryReactorClock()
    calls = Calls(clock)
    return clock, calls, Deadline(clock, seconds, calls)


def test_fires_once_when_the_period_passes() -> None:
    clock, calls, d = make(10)
    assert d.active
    clock.advance(9.99)
    assert calls.times == []
    clock.advance(0.01)
    assert calls.times == [10.0]
    assert not d.active
    clock.advance(100)
    assert calls.times == [10.0]
    assert clock.getDelayedCalls() == []


def test_touch_pushes_the_deadline_back_from_now() -> None:
    clock, calls, d = make(10)
    clock.advance(3)
    d.touch()
    clock.advance(9.5)  # t = 12.5: the original deadline (10) has passed
    assert calls.times == []
    clock.advance(0.5)  # t = 13: ten seconds after the touch
    assert calls.times == [13.0]


def test_touching_on_every_read_keeps_one_delayed_call() -> None:
    clock = MemoryReactorClock()
    calls = Calls(clock)
    scheduled = []
    call_later = clock.callLater

    def counting_call_later(*args: object, **kwargs: object) -> object:
        scheduled.append(args[0])
        return call_later(*args, **kwargs)  # type: ignore[arg-type]

    clock.callLater = counting_call_later  # type: ignore[method-assign]
    d = Deadline(clock, 10, calls)
    for _ in range(1000):
        clock.advance(0.05)
        d.touch()
        assert len(clock.getDelayedCalls()) == 1
    # 50 seconds of reads: the first call plus one wake-up per period, not one per touch
    assert len(scheduled) <= 6
    assert calls.times == []
    clock.advance(10)
    assert calls.times == [pytest.approx(60.0)]
    assert clock.getDelayedCalls() == []


def test_fires_at_the_last_touch_plus_period_after_early_wakeups() -> None:
    clock, calls, d = make(10)
    clock.advance(9)
    d.touch()  # expires at 19
    clock.advance(1)  # the original call wakes at 10 and reschedules itself for the rest
    assert calls.times == []
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(8.9)
    assert calls.times == []
    clock.advance(0.1)
    assert calls.times == [19.0]


def test_restart_with_a_shorter_period_fires_sooner() -> None:
    clock, calls, d = make(60)
    clock.advance(1)
    d.restart(5, calls)
    clock.advance(4.9)
    assert calls.times == []
    clock.advance(0.1)
    assert calls.times == [6.0]
    assert clock.getDelayedCalls() == []


def test_restart_with_a_longer_period_fires_later() -> None:
    clock, calls, d = make(5)
    d.restart(30, calls)
    clock.advance(29)
    assert calls.times == []
    clock.advance(1)
    assert calls.times == [30.0]


def test_restart_changes_the_callback() -> None:
    clock, old, d = make(5)
    new = Calls(clock)
    d.restart(5, new)
    clock.advance(5)
    assert old.times == []
    assert new.times == [5.0]


def test_restart_after_expiry_schedules_again() -> None:
    clock, calls, d = make(5)
    clock.advance(5)
    assert calls.times == [5.0]
    d.restart(2, calls)
    assert d.active
    clock.advance(2)
    assert calls.times == [5.0, 7.0]


def test_restart_from_the_callback_itself() -> None:
    clock = MemoryReactorClock()
    times: list[float] = []

    def expired() -> None:
        times.append(clock.seconds())
        if len(times) < 3:
            d.restart(4, expired)

    d = Deadline(clock, 4, expired)
    clock.pump([1] * 20)
    assert times == [4.0, 8.0, 12.0]
    assert not d.active
    assert clock.getDelayedCalls() == []


def test_cancel_stops_it_and_is_idempotent() -> None:
    clock, calls, d = make(5)
    d.cancel()
    assert not d.active
    assert clock.getDelayedCalls() == []
    d.cancel()
    d.touch()  # activity after cancel does not revive it
    clock.advance(100)
    assert calls.times == []


def test_cancel_after_an_early_wakeup() -> None:
    clock, calls, d = make(5)
    clock.advance(4)
    d.touch()
    clock.advance(1)  # the call rescheduled itself
    d.cancel()
    assert clock.getDelayedCalls() == []
    clock.advance(100)
    assert calls.times == []


def test_restart_after_cancel() -> None:
    clock, calls, d = make(5)
    d.cancel()
    clock.advance(50)
    d.restart(3, calls)
    clock.advance(3)
    assert calls.times == [53.0]


def test_period_is_updated_by_restart_for_later_touches() -> None:
    clock, calls, d = make(10)
    d.restart(2, calls)
    assert d.seconds == 2
    clock.advance(1)
    d.touch()  # now 2 seconds from t=1, not 10
    clock.advance(2)
    assert calls.times == [3.0]
