# -*- test-case-name: tests.test_testing -*-
"""A :class:`~fwproxy.testing.memory.Harness` that runs the network by itself, for property
tests: one client connection, and origins that answer from a script.

:class:`World` completes or refuses the connections the proxy asks for, in the order a script
says; parses what reaches each upstream with a fresh :class:`~fwproxy.http1.RequestReader`
and answers every complete request with the next scripted response; and delivers
``connectionLost`` for every transport the proxy closes, the way a real reactor would.
:meth:`World.pump` runs all that until nothing moves; :meth:`World.advance` moves the clock.
"""

from __future__ import annotations

from typing import Any

from fwproxy.config import Config, loads
from fwproxy.http1 import END, ERROR, REST, RequestReader
from fwproxy.testing.memory import ConfigLike, Harness, Upstream
from fwproxy.tunnel import TunnelUpstream

#: The world's default configuration: short, distinct timeouts (running out the clock is quick,
#: and a test can tell which one fired) and small limits (small inputs reach them).
WORLD_CONFIG = """
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

[tunnel]
peek_ports = []

[limits]
max_header_size = 4096
max_headers = 50
max_target = 1024
"""

#: What an origin may answer a request with, by name (see ``World(answers=...)``).
RESPONSES = {
    "cl": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "close": b"HTTP/1.1 200 OK\r\n\r\nok",
    "conn-close": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    "garbage": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
}

_DEFAULT = loads(WORLD_CONFIG, "<World config>")


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


class _Origin:
    """What the world knows of one upstream connection: the requests that reached it."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.reader = RequestReader(1 << 20, 1000, 1 << 20)
        self.seen = 0
        self.events: list[tuple[int, Any]] = []

    def new_bytes(self) -> bytes:
        data = self.upstream.transport.value()[self.seen :]
        self.seen += len(data)
        return data


class World:
    """A proxy, one client connection and its upstreams, all in memory, moving by themselves.

    :param attempts: what happens to the proxy's connection attempts, in turn: ``accept``,
        ``refuse`` or ``hang`` (never completes: the proxy's connect timeout must fire).
    :param answers: how the upstreams answer each complete request, in turn: a key of
        :data:`RESPONSES` (``close``: close-delimited, then the origin closes) or ``silent``.
    :param config: default :data:`WORLD_CONFIG`.
    :param resolver: default: a new :class:`~fwproxy.testing.doubles.FakeResolver`.

    The world does not watch the log (a property test makes thousands of worlds): watch it with
    a :class:`~fwproxy.testing.doubles.FailureLog` around the test.

    :ivar client: the proxy's protocol for the client connection. :ivar client_t: its transport.
    :ivar upstreams: every upstream connection completed, in order; ``relay`` tells a relayed
        request's connection from a tunnel's.
    """

    def __init__(
        self,
        attempts: list[str] | None = None,
        answers: list[str] | None = None,
        config: ConfigLike = _DEFAULT,
        resolver: Any = None,
        filters: list[object] | None = None,
    ) -> None:
        self.harness = Harness(config, filters=filters, resolver=resolver, watch_log=False)
        self.config = self.harness.config
        self.clock = self.harness.clock
        self.resolver = self.harness.resolver
        self.factory = self.harness.factory
        self.connection = self.harness.connect()
        self.client = self.connection.proto
        self.client_t = self.connection.transport
        self.attempts = attempts or ["accept"]
        self.answers = answers or ["cl"]
        self.next_attempt = 0
        self.upstreams: list[Upstream] = []
        self._origins: list[_Origin] = []
        self.n_answers = 0

    @property
    def client_lost(self) -> bool:
        """The proxy closed the client connection (and was told it is gone)."""
        return self.connection.gone

    def send(self, data: bytes) -> None:
        """The client sends ``data``; then the network settles."""
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
                up = self.harness.accept(i)
                assert up.relay or isinstance(up.proto, TunnelUpstream), up.proto
                self.upstreams.append(up)
                self._origins.append(_Origin(up))
            elif what == "refuse":
                self.harness.refuse(i)
            # "hang": never completes; the proxy's connect timeout must fire
        for origin in self._origins:
            up = origin.upstream
            if up.gone:
                continue
            data = origin.new_bytes()
            if data:
                progress = True
                if up.relay:
                    events = origin.reader.feed(data)
                    origin.events.extend(events)
                    for kind, _ in events:
                        if kind == END and not up.gone:
                            self._answer(up)
            if up.transport.disconnecting and not up.gone:
                progress = True
                up.lost()
        if self.client_t.disconnecting and not self.connection.gone:
            progress = True
            self.connection.lost()
        return progress

    def _answer(self, up: Upstream) -> None:
        what = self.answers[self.n_answers % len(self.answers)]
        self.n_answers += 1
        if what == "silent":
            return
        up.send(RESPONSES[what])
        if what in ("close", "conn-close"):
            up.lost()

    def advance(self, seconds: float, step: float = 1.0) -> None:
        """Move the clock forward in steps, letting the network settle after each."""
        left = seconds
        while left > 1e-9:
            dt = min(step, left)
            self.clock.advance(dt)
            left -= dt
            self.pump()

    def run_out_the_clock(self) -> None:
        """Move the clock past every configured timeout."""
        self.advance(horizon(self.config))

    def forwarded(self) -> int:
        """Complete requests the upstreams received; every upstream's bytes must parse."""
        n = 0
        for origin in self._origins:
            if not origin.upstream.relay:
                continue
            kinds = [k for k, _ in origin.events]
            data = origin.upstream.transport.value()[:500]
            assert ERROR not in kinds, f"malformed bytes upstream: {data!r}"
            assert REST not in kinds, data
            n += kinds.count(END)
        return n
