"""fwproxy.writes: an idle TCP transport is sent on at once; anything else keeps Twisted's order.

The transports are real ``tcp.Server`` objects on a socket pair (no network) driven by a
MemoryReactor, so "sent at once" means the peer can read the bytes before any reactor turn.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport

from fwproxy import writes
from fwproxy.streaming import Pacing, Policy
from fwproxy.testing import FakeTransport, address

ADDRESSES = (address("127.0.0.1", 1), address("127.0.0.1", 2))


class _Server:
    def __init__(self) -> None:
        self.ours, self.peer = socket.socketpair()
        self.peer.settimeout(5)
        self.reactor = MemoryReactor()
        self.transport = tcp.Server(self.ours, Protocol(), ("127.0.0.1", 1), None, 1, self.reactor)

    def received(self, at_least: int = 1) -> bytes:
        data = b""
        self.peer.setblocking(False)
        try:
            while chunk := self.peer.recv(1 << 20):
                data += chunk
        except BlockingIOError:
            pass
        assert len(data) >= at_least or at_least == 0, data
        return data

    def reactor_turn(self) -> None:
        """What the reactor does when the socket is writable."""
        assert self.transport in self.reactor.writers
        self.transport.doWrite()


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.ours.close()
    s.peer.close()


def test_idle_transport_sends_at_once(server: _Server) -> None:
    writes.write(server.transport, b"HTTP/1.1 200 OK\r\n\r\n")
    assert server.received() == b"HTTP/1.1 200 OK\r\n\r\n"
    assert server.transport not in server.reactor.writers  # no detour through the reactor


def test_queued_bytes_are_not_overtaken(server: _Server) -> None:
    server.transport.write(b"first ")
    writes.write(server.transport, b"second")
    assert server.received(at_least=0) == b""
    server.reactor_turn()
    assert server.received() == b"first second"


def test_what_the_kernel_did_not_take_is_buffered_in_order(server: _Server) -> None:
    server.ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    data = bytes(range(256)) * 4096  # 1 MiB: more than a socket pair's buffers hold
    writes.write(server.transport, data)
    assert server.transport in server.reactor.writers  # the rest waits for the reactor
    writes.write(server.transport, b"tail")  # and later writes queue behind it
    got = b""
    while len(got) < len(data) + 4:
        got += server.received(at_least=0)
        if server.transport in server.reactor.writers:
            server.reactor_turn()
    assert got == data + b"tail"


def test_closing_transport_gets_nothing_directly(server: _Server) -> None:
    server.transport.loseConnection()
    writes.write(server.transport, b"late")
    assert server.received(at_least=0) == b""


def test_other_transports_are_written_to_normally() -> None:
    t = StringTransport()
    writes.write(t, b"abc")
    assert t.value() == b"abc"


def test_a_pacer_is_told_what_moved() -> None:
    # a splice's consumer has a streaming.Pacer as its producer: its bytes count towards large
    # buffers, in either direction
    a, b = FakeTransport(*ADDRESSES), FakeTransport(*ADDRESSES)
    pacing = Pacing((a, b), Clock(), Policy(keep_up=100))
    pacing.link(a, b)
    pacing.link(b, a)
    writes.write(b, b"x" * 99)
    assert not pacing.large
    writes.write(a, b"y")
    assert pacing.large
    assert b.value() == b"x" * 99 and a.value() == b"y"


def test_other_producers_are_left_alone() -> None:
    t, producer = FakeTransport(*ADDRESSES), FakeTransport(*ADDRESSES)
    t.registerProducer(producer, True)
    writes.write(t, b"abc")
    assert t.value() == b"abc" and producer.producerState == "producing"
