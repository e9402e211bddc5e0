# -*- test-case-name: tests.test_testing -*-
"""A whole proxy in memory: no sockets, no real time.

:class:`Harness` builds a :class:`~fwproxy.factory.ProxyFactory` on a ``MemoryReactorClock``
with a :class:`~fwproxy.testing.doubles.FakeResolver`, the configured built-in filters, the
filters under test and a :class:`~fwproxy.testing.doubles.Recorder`. :meth:`Harness.connect`
makes a client connection over a :class:`~fwproxy.testing.doubles.FakeTransport`;
:meth:`Harness.accept` completes a connection the proxy asked the reactor for
(``reactor.tcpClients``) by building its protocol from the recorded factory and connecting it
to another ``FakeTransport``, and :meth:`Harness.refuse` fails one. The test moves time with
``harness.clock.advance``. Every failure the proxy logs is kept in :attr:`Harness.failures`; the
:func:`harnesses` context manager fails on any the test did not take with
:meth:`Harness.take_failures`.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from twisted.internet import error as ierror
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from fwproxy.config import Config, loads, parse
from fwproxy.record import TransactionRecord
from fwproxy.testing._proxy import configured_filters, make_factory
from fwproxy.testing.doubles import FailureLog, FakeResolver, FakeTransport, Recorder, address
from fwproxy.upstream import UpstreamProtocol

#: The harness's default configuration: local clients only, CONNECT to 443 only, a distinct
#: value for every timeout, so a test can tell which one fired, and no tunnel peeked (its bytes
#: are the test's, not TLS: set ``[tunnel] peek_ports`` to test peeking).
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
client_hello = 3

[tunnel]
peek_ports = []

[pool]
max_idle_per_host = 2
idle_timeout = 15
"""

#: The proxy's own address as the client connections see it.
PROXY_LOCAL = ("127.0.0.1", 3128)
#: The address clients connect from unless a test says otherwise.
CLIENT_IP = "127.0.0.1"

ConfigLike = str | Mapping[str, Any] | Config


def as_config(config: ConfigLike, source: str) -> Config:
    """``config`` as a validated :class:`Config`: TOML text, a parsed TOML mapping, or one.

    :raise fwproxy.config.ConfigError: naming ``source``, the key and the problem.
    """
    if isinstance(config, Config):
        return config
    if isinstance(config, str):
        return loads(config, source)
    return parse(config, source)


class _Connection:
    """One end of the proxy as a test sees it: a :class:`FakeTransport` whose written bytes
    can be read, and whose state tells whether the proxy closed or paused it."""

    transport: FakeTransport
    #: ``connectionLost`` was delivered to the proxy's protocol (see :meth:`lost`)
    gone = False

    def received(self) -> bytes:
        """Every byte the proxy wrote to this connection."""
        return self.transport.value()

    def take(self) -> bytes:
        """What the proxy wrote since the last take."""
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
    """One client connection to the proxy; :attr:`proto` is the proxy's protocol for it."""

    def __init__(self, harness: Harness, peer: tuple[str, int], local: tuple[str, int]) -> None:
        self.transport = FakeTransport(address(*local), address(*peer))
        self.proto = harness.factory.buildProtocol(address(*peer))
        self.transport.protocol = self.proto
        self.proto.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        """The client sends ``data``."""
        self.proto.dataReceived(data)

    def shutdown_write(self) -> None:
        """The client half-closes (sends FIN)."""
        self.proto.readConnectionLost()

    def lost(self, reason: type[Exception] = ierror.ConnectionDone) -> None:
        """The connection is gone (an orderly close unless ``reason`` says otherwise)."""
        self.gone = True
        self.transport.connected = False
        self.proto.connectionLost(Failure(reason()))


class Upstream(_Connection):
    """One upstream connection, completed by hand from ``reactor.tcpClients``.

    :ivar host: the address the proxy connected to. :ivar port: and the port.
    :ivar timeout: the connect timeout the proxy asked the reactor for.
    :ivar proto: the protocol the proxy built for it (a relay's or a tunnel's).
    """

    def __init__(self, entry: tuple[Any, ...], local_port: int) -> None:
        host, port, factory, timeout, _bind = entry
        self.host, self.port, self.timeout = host, port, timeout
        peer = address(host, port)
        self.proto = factory.buildProtocol(peer)
        #: what the transport delivers to (the same object as :attr:`proto`)
        self.wrapper = self.proto
        self.transport = FakeTransport(address("10.9.0.1", local_port), peer)
        self.transport.protocol = self.proto
        self.proto.makeConnection(self.transport)

    @property
    def relay(self) -> bool:
        """This connection carries relayed requests (it is not a CONNECT tunnel's)."""
        return isinstance(self.proto, UpstreamProtocol)

    def send(self, data: bytes) -> None:
        """The origin sends ``data``."""
        self.proto.dataReceived(data)

    def shutdown_write(self) -> None:
        """The origin half-closes; a protocol that can't half-close sees the connection end."""
        if IHalfCloseableProtocol.providedBy(self.proto):
            self.proto.readConnectionLost()
        else:
            self.lost()

    def lost(self, reason: type[Exception] = ierror.ConnectionDone) -> None:
        """The connection is gone (an orderly close unless ``reason`` says otherwise)."""
        self.gone = True
        self.transport.connected = False
        self.proto.connectionLost(Failure(reason()))


class Harness:
    """A proxy on a ``MemoryReactorClock``, with its client and upstream connections.

    :param config: TOML text, a parsed TOML mapping or a :class:`Config`.
    :param filters: the filters under test; they run after the configured built-ins (the
        ``accesslog`` aside: in memory, nothing is logged) and before :attr:`recorder`.
    :param resolver: default: a new :class:`FakeResolver`.
    :param builtins: run the configured filters (``acl``, ``headers``, ``[[filters]]``).
    :param config_filters: run exactly the chain the factory builds from ``config`` (the
        ``accesslog`` too), and neither ``filters`` nor :attr:`recorder`.
    :param portal: a ``twisted.cred`` Portal for ``proxy_auth`` ACLs.
    :param watch_log: collect the failures the proxy logs in :attr:`failures` (a global log
        observer, until :meth:`close`).
    """

    def __init__(
        self,
        config: ConfigLike = BASE_CONFIG,
        filters: list[object] | None = None,
        resolver: Any = None,
        builtins: bool = True,
        config_filters: bool = False,
        portal: Any = None,
        watch_log: bool = True,
    ) -> None:
        self.clock = MemoryReactorClock()
        self.config = as_config(config, "<Harness config>")
        self.resolver = resolver if resolver is not None else FakeResolver()
        self.recorder = Recorder()
        self._log = FailureLog()
        if watch_log:
            self._log.open()
        chain: list[object] | None = None
        if not config_filters:
            built = (
                configured_filters(self.config, self.clock, self.resolver, portal, access_log=False)
                if builtins
                else []
            )
            chain = [*built, *(filters or []), self.recorder]
        self.factory = make_factory(self.config, self.clock, chain, self.resolver, portal)
        self._accepted = 0

    def close(self) -> None:
        """Stop watching the log."""
        self._log.close()

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def failures(self) -> list[Failure]:
        """Failures the proxy logged that the test has not taken yet."""
        return self._log.failures

    def take_failures(self) -> list[Failure]:
        """The failures logged so far, which are then forgotten."""
        return self._log.take()

    @property
    def records(self) -> list[TransactionRecord]:
        """The records of finished transactions, in order."""
        return self.recorder.records

    def connect(
        self, peer: tuple[str, int] = (CLIENT_IP, 50000), local: tuple[str, int] = PROXY_LOCAL
    ) -> Client:
        """A new client connection from ``peer`` to the proxy's ``local`` address."""
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
        factory = self.clock.tcpClients[index][2]
        connector = self.clock.connectors[index]
        factory.clientConnectionFailed(
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
            assert not h.failures, [f.getTraceback() for f in h.failures]
    finally:
        for h in made:
            h.close()
