# -*- test-case-name: tests.test_chain -*-
"""Runs the configured filters' hooks in order, synchronously where every hook answers so.

:meth:`FilterChain.run` calls each hook in turn; the first that answers with something other
than ``None`` ends the run. A hook that returns a Deferred makes the rest of the run wait for it
(and only then is a Deferred involved): the synchronous path allocates none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mypy_extensions import mypyc_attr
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from fwproxy.interfaces import (
    IConnectFilter,
    IConnectionFilter,
    IDestinationCheck,
    IFilterLifecycle,
    IRequestBodyFilter,
    IRequestFilter,
    IResponseBodyFilter,
    IResponseFilter,
    ITransactionObserver,
    IUpstreamSelector,
)

Hook = Callable[..., Any]


class FilterError(Exception):
    """A filter's hook raised, or its Deferred failed: :attr:`failure` says how, and
    :attr:`filter` names the filter (for the log line that goes with the 500)."""

    def __init__(self, hook: Hook, failure: Failure) -> None:
        owner = getattr(hook, "__self__", None)
        name = getattr(hook, "__qualname__", repr(hook))
        self.filter = f"{type(owner).__module__}.{type(owner).__qualname__}" if owner else name
        self.hook = getattr(hook, "__name__", "hook")
        self.failure = failure
        super().__init__(f"filter {self.filter}.{self.hook} failed: {failure.getErrorMessage()}")


def _named(failure: Failure, hook: Hook) -> Failure:
    if failure.check(FilterError):
        return failure
    return Failure(FilterError(hook, failure))


def run(hooks: Sequence[Hook], *args: Any) -> Any:
    """Call ``hooks`` in order with ``args`` until one answers; return its answer (or a
    Deferred of it when a hook answered with a Deferred). ``None``: nobody answered.

    :raise FilterError: a hook raised (its Deferred failing fails the returned Deferred with a
        :class:`FilterError` too).
    """
    for i, hook in enumerate(hooks):
        try:
            result = hook(*args)
        except Exception:
            raise FilterError(hook, Failure()) from None
        if result is None:
            continue
        if isinstance(result, Deferred):
            rest = hooks[i + 1 :]

            def _next(value: Any, rest: Sequence[Hook] = rest) -> Any:
                return value if value is not None else run(rest, *args)

            return result.addCallbacks(_next, _named, errbackArgs=(hook,))
        return result
    return None


def _hooks(filters: Sequence[object], interface: Any, name: str) -> tuple[Hook, ...]:
    """The bound ``name`` method of each filter providing ``interface``, in order."""
    return tuple(getattr(f, name) for f in filters if interface.providedBy(f))


@mypyc_attr(allow_interpreted_subclasses=True)
class FilterChain:
    """The hooks of a list of filters, sorted by interface once, in configuration order."""

    def __init__(self, filters: Sequence[object]) -> None:
        self.filters = tuple(filters)
        self.connection = _hooks(filters, IConnectionFilter, "clientConnected")
        self.request = _hooks(filters, IRequestFilter, "requestReceived")
        self.connect = _hooks(filters, IConnectFilter, "connectReceived")
        self.response = _hooks(filters, IResponseFilter, "responseReceived")
        self.destination = _hooks(filters, IDestinationCheck, "checkDestination")
        self.observers = _hooks(filters, ITransactionObserver, "transactionFinished")
        self.lifecycle = tuple(f for f in filters if IFilterLifecycle.providedBy(f))
        self.upstream = _hooks(filters, IUpstreamSelector, "selectUpstream")
        self.request_body = _hooks(filters, IRequestBodyFilter, "requestBody")
        self.response_body = _hooks(filters, IResponseBodyFilter, "responseBody")
