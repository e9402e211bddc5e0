"""Name resolution with a cache (fwproxy.resolver), on a fake name resolver and clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock

from fwproxy.resolver import ReactorResolver


class FakeNames:
    """A ``nameResolver`` whose answers are delivered by hand."""

    def __init__(self) -> None:
        self.asked: list[tuple[Any, str]] = []

    def resolveHostName(self, receiver: Any, host: str, port: int = 0) -> None:
        self.asked.append((receiver, host))

    def answer(self, i: int, *addresses: str) -> None:
        receiver, _ = self.asked[i]
        receiver.resolutionBegan(None)
        for a in addresses:
            receiver.addressResolved(IPv4Address("TCP", a, 0))
        receiver.resolutionComplete()


def _resolver(ttl: float = 30, negative: float = 5) -> tuple[ReactorResolver, FakeNames, Any]:
    clock = MemoryReactorClock()
    names = FakeNames()
    clock.nameResolver = names  # type: ignore[attr-defined]
    return ReactorResolver(clock, ttl, negative), names, clock


def test_ip_literals_are_answered_at_once() -> None:
    r, names, _ = _resolver()
    assert r.resolve("192.0.2.1") == ["192.0.2.1"]
    assert r.resolve("::1") == ["::1"]
    assert names.asked == []


def test_answers_are_cached_for_the_ttl_and_lookups_coalesced() -> None:
    r, names, clock = _resolver(ttl=30)
    got: list[list[str]] = []
    r.resolve("a.test").addCallback(got.append)  # type: ignore[union-attr]
    r.resolve("a.test").addCallback(got.append)  # type: ignore[union-attr]
    assert len(names.asked) == 1  # one lookup for both
    names.answer(0, "192.0.2.1", "192.0.2.1", "192.0.2.2")
    assert got == [["192.0.2.1", "192.0.2.2"]] * 2
    assert r.resolve("a.test") == ["192.0.2.1", "192.0.2.2"]  # cached: no Deferred
    clock.advance(31)
    r.resolve("a.test")
    assert len(names.asked) == 2


def test_failures_are_cached_briefly() -> None:
    r, names, clock = _resolver(negative=5)
    got: list[list[str]] = []
    r.resolve("gone.test").addCallback(got.append)  # type: ignore[union-attr]
    names.answer(0)
    assert got == [[]]
    assert r.resolve("gone.test") == []
    clock.advance(6)
    r.resolve("gone.test")
    assert len(names.asked) == 2


def test_a_broken_name_resolver_is_a_failed_lookup() -> None:
    clock = MemoryReactorClock()

    class Broken:
        def resolveHostName(self, *a: Any) -> None:
            raise OSError("no resolver")

    clock.nameResolver = Broken()  # type: ignore[attr-defined]
    got: list[list[str]] = []
    ReactorResolver(clock).resolve("x.test").addCallback(got.append)  # type: ignore[union-attr]
    assert got == [[]]
