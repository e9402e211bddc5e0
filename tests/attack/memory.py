"""An in-memory proxy for protocol-level tests: :class:`fwproxy.factory.ProxyFactory` on a
``MemoryReactorClock``, one client connection and every upstream connection on
``StringTransport``, and a fake resolver. No sockets, no real time.

:class:`World` completes the upstream connections the proxy asks the reactor for
(``reactor.tcpClients``: the recorded factory is given a protocol with ``buildProtocol(addr)``
and ``makeConnection(StringTransport())``), answers the requests that arrive there, and delivers
``connectionLost`` for every transport the proxy closes, the way a real reactor would.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import error as ierror
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from fwproxy.config import Config, loads
from fwproxy.factory import ProxyFactory, build_filters
from fwproxy.filters.accesslog import AccessLog
from fwproxy.http1 import END, ERROR, REST, RequestReader
from fwproxy.interfaces import IResolver
from fwproxy.plugins import FilterContext
from fwproxy.tunnel import TunnelUpstream
from fwproxy.upstream import UpstreamProtocol

ORIGIN_IP = "93.184.216.34"
OTHER_IP = "198.51.100.7"

#: distinct values for every timeout
CONFIG_TEXT = """
[acl.clients]
src = ["127.0.0.0/8"]

[acl.ssl]
port = [443]

[acl.connect]
method = ["CONNECT"]

[access]
rules = ["deny connect !ssl", "allow clients", "deny all"]

[timeouts]
connect = 3
request_header = 5
client_idle = 7
upstream_first_byte = 11
read = 13
tunnel_idle = 17
drain = 2

[limits]
max_header_size = 4096
max_headers = 50
max_target = 1024
"""

CONFIG = loads(CONFIG_TEXT)


def horizon(config: Config) -> int:
    """Seconds past every timeout, one after another (connect, first byte, read, ...)."""
    t = config.timeouts
    return (
        int(
            t.connect
            + t.request_header
            + t.client_idle
            + t.upstream_first_byte
            + t.read
            + t.tunnel_idle
        )
        + 5
    )


@implementer(IResolver)
class FakeResolver:
    """``example.com`` and ``other.test`` resolve; ``gone.test`` does not exist; the
    resolution of ``slow.test`` (or of every name, with ``hang=True``) never completes."""

    def __init__(self, hang: bool = False) -> None:
        self.answers = {"example.com": [ORIGIN_IP], "other.test": [OTHER_IP], "gone.test": []}
        self.hang = hang
        self.pending: list[Deferred[list[str]]] = []
        self.calls: list[str] = []

    def resolve(self, host: str) -> Any:
        self.calls.append(host)
        if host in (ORIGIN_IP, OTHER_IP):
            return [host]
        if self.hang or host == "slow.test":
            d: Deferred[list[str]] = Deferred()
            self.pending.append(d)
            return d
        return list(self.answers.get(host, []))


class Transport(StringTransport):
    def __init__(self, host: Any, peer: Any) -> None:
        super().__init__(hostAddress=host, peerAddress=peer, lenient=True)
        self.write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


class Upstream:
    """One upstream connection the proxy asked for, completed by hand."""

    def __init__(self, world: World, index: int) -> None:
        host, port, factory, _timeout, _bind = world.clock.tcpClients[index]
        peer = IPv4Address("TCP", host, port)
        self.wrapper = factory.buildProtocol(peer)
        self.transport = Transport(IPv4Address("TCP", "10.0.0.1", 40000 + index), peer)
        self.transport.protocol = self.wrapper
        self.wrapper.makeConnection(self.transport)
        self.proto = getattr(self.wrapper, "_wrappedProtocol", self.wrapper)
        self.relay = isinstance(self.proto, UpstreamProtocol)
        assert self.relay or isinstance(self.proto, TunnelUpstream), self.proto
        self.reader = RequestReader(1 << 20, 1000, 1 << 20)
        self.seen = 0
        self.events: list[tuple[int, Any]] = []
        self.lost = False

    def new_bytes(self) -> bytes:
        data = self.transport.value()[self.seen :]
        self.seen += len(data)
        return data


RESPONSES = {
    "cl": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "close": b"HTTP/1.1 200 OK\r\n\r\nok",
    "conn-close": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    "garbage": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
}


class World:
    """A proxy, one client connection and its upstreams, all in memory.

    :param attempts: what happens to the proxy's connection attempts, in turn: ``accept``,
        ``refuse`` or ``hang`` (never completes).
    :param answers: how the upstreams answer each complete request, in turn: a key of
        :data:`RESPONSES` (``close``: close-delimited, then the origin closes) or ``silent``.
    """

    def __init__(
        self,
        attempts: list[str] | None = None,
        answers: list[str] | None = None,
        config: Config = CONFIG,
        resolver: Any = None,
    ) -> None:
        self.config = config
        self.clock = MemoryReactorClock()
        self.resolver = resolver if resolver is not None else FakeResolver()
        context = FilterContext(self.clock, config, self.resolver)
        filters = [f for f in build_filters(config, context) if not isinstance(f, AccessLog)]
        self.factory = ProxyFactory(config, self.clock, filters=filters, resolver=self.resolver)
        peer = IPv4Address("TCP", "127.0.0.1", 50000)
        self.client_t = Transport(IPv4Address("TCP", "127.0.0.1", 3128), peer)
        self.client = self.factory.buildProtocol(peer)
        self.client_t.protocol = self.client
        self.client.makeConnection(self.client_t)
        self.client_lost = False
        self.attempts = attempts or ["accept"]
        self.answers = answers or ["cl"]
        self.next_attempt = 0
        self.upstreams: list[Upstream] = []
        self.n_answers = 0

    def send(self, data: bytes) -> None:
        self.client.dataReceived(data)
        self.pump()

    def pump(self) -> None:
        """Run the network until nothing moves."""
        for _ in range(10_000):
            if not self._step():
                return
        raise AssertionError("the proxy never settles (livelock)")

    def _step(self) -> bool:
        progress = False
        clock = self.clock
        while self.next_attempt < len(clock.tcpClients):
            i = self.next_attempt
            self.next_attempt += 1
            progress = True
            if clock.connectors[i].stoppedConnecting:
                continue
            what = self.attempts[i % len(self.attempts)]
            if what == "accept":
                self.upstreams.append(Upstream(self, i))
            elif what == "refuse":
                factory = clock.tcpClients[i][2]
                factory.clientConnectionFailed(
                    clock.connectors[i], Failure(ierror.ConnectionRefusedError())
                )
            # "hang": never completes; the proxy's connect timeout must fire
        for up in self.upstreams:
            if up.lost:
                continue
            data = up.new_bytes()
            if data:
                progress = True
                if up.relay:
                    events = up.reader.feed(data)
                    up.events.extend(events)
                    for kind, _ in events:
                        if kind == END and not up.lost:
                            self._answer(up)
            if up.transport.disconnecting and not up.lost:
                up.lost = True
                progress = True
                up.wrapper.connectionLost(Failure(ierror.ConnectionDone()))
        if self.client_t.disconnecting and not self.client_lost:
            self.client_lost = True
            progress = True
            self.client.connectionLost(Failure(ierror.ConnectionDone()))
        return progress

    def _answer(self, up: Upstream) -> None:
        what = self.answers[self.n_answers % len(self.answers)]
        self.n_answers += 1
        if what == "silent":
            return
        up.wrapper.dataReceived(RESPONSES[what])
        if what in ("close", "conn-close"):
            up.lost = True
            up.wrapper.connectionLost(Failure(ierror.ConnectionDone()))

    def advance(self, seconds: float, step: float = 1.0) -> None:
        """Move the clock forward in steps, letting the network settle after each."""
        left = seconds
        while left > 1e-9:
            dt = min(step, left)
            self.clock.advance(dt)
            left -= dt
            self.pump()

    def run_out_the_clock(self) -> None:
        self.advance(horizon(self.config))

    def forwarded(self) -> int:
        """Complete requests the upstreams received; every upstream's bytes must parse."""
        n = 0
        for up in self.upstreams:
            if not up.relay:
                continue
            kinds = [k for k, _ in up.events]
            assert ERROR not in kinds, f"malformed bytes upstream: {up.transport.value()[:500]!r}"
            assert REST not in kinds, up.transport.value()[:500]
            n += kinds.count(END)
        return n
