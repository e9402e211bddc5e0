"""Running filter hooks in order (fwproxy.chain): sync answers stay sync, failures are named."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from fwproxy.chain import FilterChain, FilterError, run
from fwproxy.interfaces import IConnectFilter, IDestinationCheck, IRequestFilter


def test_first_answer_wins_and_none_goes_on() -> None:
    calls: list[str] = []

    def a(x: Any) -> None:
        calls.append("a")

    def b(x: Any) -> str:
        calls.append("b")
        return "answer"

    def c(x: Any) -> str:
        calls.append("c")
        return "late"

    assert run([a, b, c], 1) == "answer"
    assert calls == ["a", "b"]
    assert run([a], 1) is None


def test_a_deferred_answer_makes_the_rest_wait() -> None:
    d: Deferred[Any] = Deferred()
    later: list[int] = []
    result = run([lambda x: d, lambda x: later.append(x) or "done"], 7)
    assert isinstance(result, Deferred) and later == []
    got: list[Any] = []
    result.addCallback(got.append)
    d.callback(None)
    assert later == [7] and got == ["done"]
    assert isinstance(run([lambda x: succeed("now")], 0), Deferred)


class Boom:
    def hook(self, x: Any) -> Any:
        raise ValueError("bad")

    def later(self, x: Any) -> Any:
        return fail(KeyError("worse"))


def test_a_hook_that_raises_is_named() -> None:
    with pytest.raises(FilterError) as e:
        run([Boom().hook], 1)
    assert e.value.filter.endswith("test_chain.Boom") and e.value.hook == "hook"
    assert e.value.failure.check(ValueError)


def test_a_failed_deferred_is_named_too() -> None:
    got: list[Any] = []
    run([lambda x: None, Boom().later], 1).addErrback(got.append)
    [f] = got
    assert f.check(FilterError) and f.value.hook == "later"
    assert f.value.failure.check(KeyError)


def test_chain_sorts_hooks_by_interface_in_order() -> None:
    @implementer(IRequestFilter, IConnectFilter, IDestinationCheck)
    class Both:
        def requestReceived(self, r: Any) -> None: ...
        def connectReceived(self, r: Any) -> None: ...
        def checkDestination(self, r: Any) -> None: ...

    @implementer(IRequestFilter)
    class Req:
        def requestReceived(self, r: Any) -> None: ...

    one, two = Both(), Req()
    chain = FilterChain([one, two])
    assert [h.__self__ for h in chain.request] == [one, two]  # type: ignore[attr-defined]
    assert [h.__self__ for h in chain.connect] == [one]  # type: ignore[attr-defined]
    assert [h.__self__ for h in chain.destination] == [one]  # type: ignore[attr-defined]
    assert chain.response == () and chain.observers == ()
