# -*- test-case-name: tests.test_bodyfilter -*-
"""Running body filters over a streamed message, sans-IO: chunks in, pieces (or an answer) out.

A :class:`BodyChain` holds the :class:`fwproxy.interfaces.IBodyTransform` of each body filter
that took one message body, in configuration order. :meth:`BodyChain.data` feeds a chunk
through them (each piece one transform passes on is fed to the next) and :meth:`BodyChain.end`
ends each in turn. Both answer with the list of pieces to send on, a
:class:`fwproxy.message.Response` that replaces the message, or — only when a transform answered
with a Deferred — a Deferred firing with one of those; the caller must not feed the chain again
before it fires (it stops reading the producing side meanwhile). Nothing here touches a
transport: :mod:`fwproxy.bodyrelay` moves the bytes. The chain never holds more than the
transforms themselves do. :func:`drop_length` and :class:`FlowGate` are the small pieces of
re-framing and flow control the relay needs around it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from fwproxy.chain import FilterError
from fwproxy.message import Response

#: What a chain answers: the pieces to send on, or a replacement.
Output = list[bytes] | Response


class LengthChanged(Exception):
    """A transform that declared ``keeps_length`` passed on more or fewer bytes than it got."""


def _named(failure: Failure, hook: Callable[..., Any]) -> Failure:
    if failure.check(FilterError, CancelledError):  # cancelled: the transaction has ended
        return failure
    return Failure(FilterError(hook, failure))


def _pieces(result: object, hook: Callable[..., Any]) -> list[bytes] | Response:
    """A transform's synchronous answer as a list of non-empty pieces, or a Response."""
    if isinstance(result, bytes):
        return [result] if result else []
    if isinstance(result, Response):
        return result
    if isinstance(result, list | tuple) and all(isinstance(p, bytes) for p in result):
        return [p for p in result if p]
    error = TypeError(f"expected bytes, a list of bytes, a Response or a Deferred, not {result!r}")
    raise FilterError(hook, Failure(error))


def _call(hook: Callable[..., Any], *args: Any) -> Any:
    try:
        return hook(*args)
    except Exception:
        raise FilterError(hook, Failure()) from None


class BodyChain:
    """The transforms of one message body, run in order (see the module docstring)."""

    def __init__(self, transforms: Sequence[Any]) -> None:
        self.transforms = tuple(transforms)
        #: every transform keeps the length: the message keeps its Content-Length
        self.keeps_length = all(bool(getattr(t, "keeps_length", False)) for t in transforms)
        #: bytes fed in, and bytes passed out, so far
        self.consumed = 0
        self.produced = 0

    def data(self, chunk: bytes) -> Output | Deferred[Output]:
        """Feed the next chunk of the body."""
        self.consumed += len(chunk)
        return self._checked(self._stage(0, [chunk], False), False)

    def end(self) -> Output | Deferred[Output]:
        """The body is complete: end every transform, passing on what each still had."""
        return self._checked(self._stage(0, [], True), True)

    # -- running the stages ---------------------------------------------------------------
    def _stage(self, i: int, pieces: list[bytes], ending: bool) -> Any:
        if i == len(self.transforms):
            return pieces
        return self._feed(i, pieces, 0, [], ending)

    def _feed(self, i: int, pieces: list[bytes], j: int, out: list[bytes], ending: bool) -> Any:
        t = self.transforms[i]
        while j < len(pieces):
            result = _call(t.data, pieces[j])
            j += 1
            if isinstance(result, Deferred):
                return result.addCallback(self._fed, t.data, i, pieces, j, out, ending).addErrback(
                    _named, t.data
                )
            got = _pieces(result, t.data)
            if isinstance(got, Response):
                return got
            out.extend(got)
        if ending:
            result = _call(t.end)
            if isinstance(result, Deferred):
                return result.addCallback(self._ended, t.end, i, out).addErrback(_named, t.end)
            got = _pieces(result, t.end)
            if isinstance(got, Response):
                return got
            out.extend(got)
        return self._stage(i + 1, out, ending)

    def _fed(
        self,
        result: object,
        hook: Any,
        i: int,
        pieces: list[bytes],
        j: int,
        out: list[bytes],
        ending: bool,
    ) -> Any:
        got = _pieces(result, hook)
        if isinstance(got, Response):
            return got
        out.extend(got)
        return self._feed(i, pieces, j, out, ending)

    def _ended(self, result: object, hook: Any, i: int, out: list[bytes]) -> Any:
        got = _pieces(result, hook)
        if isinstance(got, Response):
            return got
        out.extend(got)
        return self._stage(i + 1, out, True)

    def _checked(self, result: Any, ending: bool) -> Any:
        if isinstance(result, Deferred):
            return result.addCallback(self._count, ending)
        return self._count(result, ending)

    def _count(self, result: Output, ending: bool) -> Output:
        if isinstance(result, Response) or not self.keeps_length:
            return result
        self.produced += sum(len(p) for p in result)
        if self.produced > self.consumed or (ending and self.produced != self.consumed):
            error = LengthChanged(
                f"body filters said they keep the length but passed on {self.produced} bytes "
                f"for {self.consumed}"
            )
            raise FilterError(self.transforms[-1].data, Failure(error))
        return result


def drop_length(fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``fields`` without Content-Length: the body is re-framed (chunked or close-delimited)."""
    return [(k, v) for k, v in fields if not (len(k) == 14 and k.lower() == b"content-length")]


#: why a :class:`FlowGate` holds its producer
CONSUMER, FILTER = 1, 2


@implementer(IPushProducer)
class FlowGate:
    """A producer paused while its consumer asks for it *or* a body filter is deciding.

    Registered on the consumer in place of ``producer``: without it, a consumer that drains its
    buffer would resume an upstream that a pending filter has paused, and what it reads would
    pile up in the proxy.
    """

    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self.held = 0

    def hold(self, reason: int) -> None:
        if not self.held:
            self.producer.pauseProducing()
        self.held |= reason

    def release(self, reason: int) -> None:
        if self.held & reason:
            self.held &= ~reason
            if not self.held:
                self.producer.resumeProducing()

    # -- IPushProducer, called by the consumer ----------------------------------------------
    def pauseProducing(self) -> None:
        self.hold(CONSUMER)

    def resumeProducing(self) -> None:
        self.release(CONSUMER)

    def stopProducing(self) -> None:
        self.producer.stopProducing()
