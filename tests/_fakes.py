"""In-memory doubles for fwproxy's protocol tests: no sockets, no real time.

:class:`Harness` builds a :class:`fwproxy.factory.ProxyFactory` on a ``MemoryReactorClock`` with a
:class:`FakeResolver`; :meth:`Harness.connect` makes a client connection over a
:class:`FakeTransport`, and :meth:`Harness.accept` completes an upstream connection the proxy
asked the reactor for (``reactor.tcpClients``) by building the protocol from the recorded
factory and connecting it to another :class:`FakeTransport`. Every failure the proxy logs is
collected in :attr:`Harness.failures`; the ``harnesses`` context manager fails the test on any
that the test did not take with :meth:`Harness.take_failures`.
"""

from __future__ import annotations

import gc
import ipaddress
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from twisted.internet import error as ierror
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from fwproxy.config import loads
from fwproxy.factory import ProxyFactory, build_filters
from fwproxy.filters.accesslog import AccessLog
from fwproxy.interfaces import IResolver, ITransactionObserver
from fwproxy.plugins import FilterContext
from fwproxy.record import TransactionRecord

#: Distinct values for every timeout, so a test can tell which one fired.
BASE_CONFIG = """
[acl.localhost]
src = ["127.0.0.0/8", "::1/128"]

[acl.ssl_ports]
port = [443]

[acl.connect]
method = ["CONNECT"]

[access]
rules = ["deny connect !ssl_ports", "allow localhost", "deny all"]

[timeouts]
connect = 10
request_header = 5
client_idle = 20
upstream_first_byte = 30
read = 100
tunnel_idle = 50

[pool]
max_idle_per_host = 2
idle_timeout = 15
"""

ORIGIN_IP = "93.184.216.34"
OTHER_IP = "198.51.100.7"
PROXY_LOCAL = ("127.0.0.1", 3128)
CLIENT_IP = "127.0.0.1"


def address(host: str, port: int) -> IPv4Address | IPv6Address:
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


class FakeTransport(StringTransport):
    """A StringTransport that records a half-close and can act like a full write buffer.

    Lenient about ``resumeProducing`` after ``loseConnection``, as TCP transports are. With
    :attr:`full` set, every write pauses the registered streaming producer, as a TCP transport
    does when its buffer goes over its limit; :meth:`drain` resumes it, as an emptied buffer does.
    """

    write_closed = False
    full = False

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
    """Answers from a table; names in :attr:`deferred` get a Deferred fired by hand."""

    def __init__(self, answers: dict[str, list[str]] | None = None) -> None:
        self.answers = {"example.com": [ORIGIN_IP], "other.test": [OTHER_IP], "gone.test": []}
        self.answers.update(answers or {})
        self.calls: list[str] = []
        self.deferred: set[str] = set()
        self.pending: list[tuple[str, Deferred[list[str]]]] = []

    def resolve(self, host: str) -> list[str] | Deferred[list[str]]:
        self.calls.append(host)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return [host]
        if host in self.deferred:
            d: Deferred[list[str]] = Deferred()
            self.pending.append((host, d))
            return d
        return list(self.answers.get(host, []))


@implementer(ITransactionObserver)
class Recorder:
    """Keeps every :class:`TransactionRecord` it is told about."""

    def __init__(self) -> None:
        self.records: list[TransactionRecord] = []

    def transactionFinished(self, record: TransactionRecord) -> None:
        self.records.append(record)


class _Connection:
    """What both ends of the proxy look like from a test: a :class:`FakeTransport` whose
    written bytes can be read, and whose state tells whether the proxy closed or paused it."""

    transport: FakeTransport

    def received(self) -> bytes:
        return self.transport.value()

    def take(self) -> bytes:
        return self.transport.take()

    @property
    def closed(self) -> bool:
        """The proxy closed (or aborted) this connection."""
        return bool(self.transport.disconnecting)

    @property
    def paused(self) -> bool:
        """The proxy stopped reading from this connection."""
        return self.transport.producerState == "paused"


class Client(_Connection):
    """One client connection to the proxy."""

    def __init__(self, harness: Harness, peer: tuple[str, int], local: tuple[str, int]) -> None:
        self.transport = FakeTransport(address(*local), address(*peer))
        self.proto = harness.factory.buildProtocol(address(*peer))
        self.transport.protocol = self.proto
        self.proto.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def shutdown_write(self) -> None:
        """The client half-closes (sends FIN)."""
        self.proto.readConnectionLost()

    def lost(self, reason: type[Exception] = ierror.ConnectionDone) -> None:
        """The connection is gone."""
        self.transport.connected = False
        self.proto.connectionLost(Failure(reason()))


class Upstream(_Connection):
    """One upstream connection, completed by hand from ``reactor.tcpClients``."""

    def __init__(self, entry: tuple[Any, ...], local_port: int) -> None:
        host, port, wrapping_factory, timeout, _bind = entry
        self.host, self.port, self.timeout = host, port, timeout
        peer = address(host, port)
        self.wrapper = wrapping_factory.buildProtocol(peer)
        self.transport = FakeTransport(address("10.9.0.1", local_port), peer)
        self.transport.protocol = self.wrapper
        self.wrapper.makeConnection(self.transport)
        #: the protocol the proxy built (UpstreamProtocol or TunnelUpstream)
        self.proto = getattr(self.wrapper, "_wrappedProtocol", self.wrapper)

    def send(self, data: bytes) -> None:
        self.wrapper.dataReceived(data)

    def shutdown_write(self) -> None:
        """The origin half-closes; a protocol that can't half-close sees the connection end."""
        if IHalfCloseableProtocol.providedBy(self.wrapper):
            self.wrapper.readConnectionLost()
        else:
            self.lost()

    def lost(self, reason: type[Exception] = ierror.ConnectionDone) -> None:
        self.transport.connected = False
        self.wrapper.connectionLost(Failure(reason()))


class Harness:
    """A proxy on a MemoryReactorClock, with its clients and upstream connections."""

    def __init__(
        self,
        toml: str = BASE_CONFIG,
        filters: list[object] | None = None,
        resolver: FakeResolver | None = None,
        builtins: bool = True,
        config_filters: bool = False,
    ) -> None:
        self.clock = MemoryReactorClock()
        self.config = loads(toml)
        self.resolver = resolver if resolver is not None else FakeResolver()
        self.recorder = Recorder()
        self.failures: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self._log)
        if config_filters:
            # the whole configured chain, as ProxyFactory builds it
            self.factory = ProxyFactory(self.config, self.clock, resolver=self.resolver)
        else:
            built: list[object] = []
            if builtins:
                context = FilterContext(self.clock, self.config, self.resolver)
                built = [
                    f for f in build_filters(self.config, context) if not isinstance(f, AccessLog)
                ]
            self.factory = ProxyFactory(
                self.config,
                self.clock,
                filters=[*built, *(filters or []), self.recorder],
                resolver=self.resolver,
            )
        self._accepted = 0

    def _log(self, event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None:
            self.failures.append(event)

    def close(self) -> None:
        globalLogPublisher.removeObserver(self._log)

    def take_failures(self) -> list[Failure]:
        found = [e["log_failure"] for e in self.failures]
        self.failures.clear()
        return found

    @property
    def records(self) -> list[TransactionRecord]:
        return self.recorder.records

    def connect(
        self, peer: tuple[str, int] = (CLIENT_IP, 50000), local: tuple[str, int] = PROXY_LOCAL
    ) -> Client:
        return Client(self, peer, local)

    @property
    def attempts(self) -> list[tuple[Any, ...]]:
        """Every connectTCP the proxy made: ``(host, port, factory, timeout, bindAddress)``."""
        return self.clock.tcpClients

    def accept(self, index: int = -1) -> Upstream:
        """Complete the connection attempt ``index`` (default: the latest)."""
        connector = self.clock.connectors[index]
        assert not connector.stoppedConnecting, "the proxy gave up this connection attempt"
        self._accepted += 1
        return Upstream(self.clock.tcpClients[index], 40000 + self._accepted)

    def refuse(self, index: int = -1, reason: Exception | None = None) -> None:
        """Make the connection attempt ``index`` fail (connection refused by default)."""
        wrapping_factory = self.clock.tcpClients[index][2]
        connector = self.clock.connectors[index]
        wrapping_factory.clientConnectionFailed(
            connector, Failure(reason or ierror.ConnectionRefusedError())
        )


@contextmanager
def harnesses() -> Iterator[Callable[..., Harness]]:
    """Yield a :class:`Harness` maker; on exit, fail on any failure the proxy logged that the
    test did not take, including Deferreds garbage-collected with an unhandled error."""
    made: list[Harness] = []

    def make(*args: Any, **kwargs: Any) -> Harness:
        h = Harness(*args, **kwargs)
        made.append(h)
        return h

    try:
        yield make
        gc.collect()
        for h in made:
            assert not h.failures, [e["log_failure"].getTraceback() for e in h.failures]
    finally:
        for h in made:
            h.close()


# -- fixtures and requests shared by the protocol, relay and tunnel tests -----------------------
# (tests/conftest.py makes the ``make`` and ``h`` fixtures visible to every test module)


@pytest.fixture
def make() -> Iterator[Callable[..., Harness]]:
    with harnesses() as make:
        yield make


@pytest.fixture
def h(make: Callable[..., Harness]) -> Harness:
    return make()


OK5 = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def get(
    url: bytes = b"http://example.com/",
    headers: bytes = b"",
    version: bytes = b"1.1",
    method: bytes = b"GET",
) -> bytes:
    """A request head (no body): ``METHOD url HTTP/version``, then ``headers``."""
    return method + b" " + url + b" HTTP/" + version + b"\r\n" + headers + b"\r\n"


def split_response(data: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    """``(status_line, fields, rest)`` of the first response head in ``data``."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no complete head in {data!r}"
    lines = head.split(b"\r\n")
    fields = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields.append((name, value.strip()))
    return lines[0], fields, rest


def field(fields: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for k, v in fields:
        if k.lower() == name.lower():
            return v
    return None


def status_of(data: bytes) -> int:
    """The status code of the first response in ``data``."""
    line = data.split(b"\r\n", 1)[0]
    assert line.startswith(b"HTTP/1."), data[:80]
    return int(line.split(b" ")[1])


#: Recorders built from ``[[filters]] name = "tests._fakes.recorder_filter"``, by ``options.key``.
RECORDERS: dict[str, Recorder] = {}


def recorder_filter(options: Any, context: Any) -> Recorder:
    """A filter factory callable, for configuring a :class:`Recorder` by dotted path."""
    recorder = Recorder()
    RECORDERS[options["key"]] = recorder
    return recorder
