# -*- test-case-name: tests.test_testing -*-
"""Test doubles for the proxy's surroundings: transports, a resolver, an observer, a log watch.

:class:`FakeTransport` is a ``StringTransport`` that also half-closes and can act like a full
write buffer; :class:`FakeResolver` answers names from a table (or never, by hand);
:class:`Recorder` keeps every :class:`~fwproxy.record.TransactionRecord`; :class:`FailureLog`
collects the failures the proxy logs (an exception in a filter ends up there). None of them
opens a socket or reads the clock; all of them can be used on their own, without a harness.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Mapping
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogPublisher, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from fwproxy.interfaces import IResolver, ITransactionObserver
from fwproxy.record import TransactionRecord

#: What :class:`FakeResolver` answers for ``example.com`` (a documentation address, never used).
ORIGIN_IP = "93.184.216.34"
#: What :class:`FakeResolver` answers for ``other.test``.
OTHER_IP = "198.51.100.7"


def address(host: str, port: int) -> IPv4Address | IPv6Address:
    """A Twisted TCP address for ``host`` (an IPv4 or IPv6 literal) and ``port``."""
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


class FakeTransport(StringTransport):
    """A ``StringTransport`` that records a half-close and can act like a full write buffer.

    Lenient about ``resumeProducing`` after ``loseConnection``, as TCP transports are. With
    :attr:`full` set, every write pauses the registered streaming producer, as a TCP transport
    does when its buffer goes over its limit; :meth:`drain` resumes it, as an emptied buffer does.
    """

    #: the proxy called ``loseWriteConnection`` (sent a FIN, keeps reading)
    write_closed = False
    #: act like a transport whose write buffer is over its limit
    full = False
    #: the protocol this transport delivers to (set by whoever connects the two)
    protocol: Any = None

    def __init__(self, host: Any, peer: Any) -> None:
        super().__init__(hostAddress=host, peerAddress=peer, lenient=True)

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.full and self.producer is not None and self.streaming:
            self.producer.pauseProducing()

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def drain(self) -> None:
        """The write buffer emptied: resume the producer."""
        self.full = False
        if self.producer is not None:
            self.producer.resumeProducing()

    def take(self) -> bytes:
        """What was written since the last take."""
        data = self.value()
        self.clear()
        return data


@implementer(IResolver)
class FakeResolver:
    """Answers from a table, at once; names in :attr:`deferred` get a Deferred fired by hand.

    ``example.com`` is :data:`ORIGIN_IP`, ``other.test`` is :data:`OTHER_IP`, ``gone.test``
    does not exist (``[]``), and the lookup of ``slow.test`` never completes by itself; other
    names are added with ``answers``. IP literals are answered as they are. With ``hang=True``
    no name's lookup completes by itself.

    :ivar calls: every name asked for, in order.
    :ivar pending: ``(name, Deferred)`` of every lookup waiting to be fired by the test.
    """

    def __init__(self, answers: Mapping[str, list[str]] | None = None, hang: bool = False) -> None:
        self.answers: dict[str, list[str]] = {
            "example.com": [ORIGIN_IP],
            "other.test": [OTHER_IP],
            "gone.test": [],
        }
        self.answers.update(answers or {})
        self.hang = hang
        self.deferred: set[str] = {"slow.test"}
        self.calls: list[str] = []
        self.pending: list[tuple[str, Deferred[list[str]]]] = []

    def resolve(self, host: str) -> list[str] | Deferred[list[str]]:
        self.calls.append(host)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return [host]
        if self.hang or host in self.deferred:
            d: Deferred[list[str]] = Deferred()
            self.pending.append((host, d))
            return d
        return list(self.answers.get(host, []))


@implementer(ITransactionObserver)
class Recorder:
    """A transaction observer that keeps every :class:`TransactionRecord` it is told about."""

    def __init__(self) -> None:
        self.records: list[TransactionRecord] = []

    def transactionFinished(self, record: TransactionRecord) -> None:
        self.records.append(record)


#: The :class:`Recorder` each ``[[filters]] name = "fwproxy.testing.recorder_filter"`` entry
#: built, by its ``options.key``.
RECORDERS: dict[str, Recorder] = {}


def recorder_filter(options: Mapping[str, Any], context: Any) -> Recorder:
    """A filter factory callable: configure a :class:`Recorder` by dotted path,
    ``[[filters]] name = "fwproxy.testing.recorder_filter"``, ``options = {key = "NAME"}``;
    the test finds it in ``RECORDERS["NAME"]``."""
    key = options.get("key")
    if not isinstance(key, str) or not key:
        raise ValueError("key: expected the name to file the recorder under in RECORDERS")
    recorder = Recorder()
    RECORDERS[key] = recorder
    return recorder


@implementer(ILogObserver)
class FailureLog:
    """Collects the failures logged (``log.failure``) while it is open, from any thread.

    The proxy logs a failure when a filter raises, when an observer raises, and when it meets a
    bug of its own; a test should look at (:meth:`take`) every one it expects and fail on the
    others. Open it with :meth:`open` or ``with``; :meth:`close` stops collecting.
    """

    def __init__(self, publisher: LogPublisher = globalLogPublisher) -> None:
        self._publisher = publisher
        self._lock = threading.Lock()
        self._open = False
        #: the failures logged and not taken yet, oldest first
        self.failures: list[Failure] = []

    def __call__(self, event: dict[str, Any]) -> None:
        failure = event.get("log_failure")
        if failure is not None:
            with self._lock:
                self.failures.append(failure)

    def open(self) -> FailureLog:
        if not self._open:
            self._open = True
            self._publisher.addObserver(self)
        return self

    def close(self) -> None:
        if self._open:
            self._open = False
            self._publisher.removeObserver(self)

    def __enter__(self) -> FailureLog:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def take(self) -> list[Failure]:
        """The failures logged so far, which are then forgotten."""
        with self._lock:
            found = list(self.failures)
            self.failures.clear()
        return found

    def tracebacks(self) -> str:
        """Every failure not taken, as tracebacks (for an assertion message)."""
        with self._lock:
            return "\n".join(f.getTraceback() for f in self.failures)
