"""fwproxy.streaming: small buffers until a splice keeps up, large ones while it does, small ones
again once a reader falls behind.

Three levels: the pacing on its own with in-memory transports (pause, resume, byte counts);
the proxy's tunnels and relayed bodies in memory (the Harness); and real ``tcp.Server``
transports on loopback TCP connections, driven by hand through a MemoryReactor, where Twisted's
own write buffer and the kernel's socket buffers decide when a producer is paused, and the bytes
a slow reader leaves in user space are counted.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable, Iterator

import pytest
from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from zope.interface.verify import verifyObject

from fwproxy import writes
from fwproxy.streaming import (
    BACKLOG,
    KEEP_UP,
    LARGE,
    PACE_OVER,
    SLOW_DRAIN,
    SMALL,
    Pacer,
    Pacing,
    Policy,
    kernel_backlog,
)
from fwproxy.testing import FakeTransport, Harness, address, get
from fwproxy.tunnel import ESTABLISHED


def transport(size: int | None = 65536) -> FakeTransport:
    t = FakeTransport(address("127.0.0.1", 1), address("127.0.0.1", 2))
    if size is not None:
        t.bufferSize = size  # type: ignore[attr-defined]
    return t


def splice() -> tuple[FakeTransport, FakeTransport, Pacing, Pacer, Pacer]:
    """Two transports spliced both ways, as a tunnel does: ``down`` moves a's bytes to b."""
    a, b = transport(), transport()
    pacing = Pacing((a, b), Clock())
    down = pacing.link(a, b)
    up = pacing.link(b, a)
    return a, b, pacing, down, up


def drain(pacer: Pacer, seconds: float) -> None:
    """The consumer's buffer fills (it pauses the pacer) and drains in ``seconds``."""
    pacer.pauseProducing()
    pacer._pacing.clock.advance(seconds)  # type: ignore[attr-defined]
    pacer.resumeProducing()


# -- the pacing on its own ---------------------------------------------------------------------


def test_transports_start_small_and_get_their_sizes_back() -> None:
    a, b, tls = transport(65536), transport(1000), transport(None)
    pacing = Pacing((a, b, tls), Clock())
    assert (a.bufferSize, b.bufferSize) == (SMALL, SMALL)  # type: ignore[attr-defined]
    assert not hasattr(tls, "bufferSize")  # nothing to bound on a transport without one
    assert not pacing.large
    pacing.link(a, b)
    pacing.detach()
    assert (a.bufferSize, b.bufferSize) == (65536, 1000)  # type: ignore[attr-defined]
    assert b.producer is None


def test_pacer_is_the_consumers_push_producer_and_passes_calls_on() -> None:
    a, b = transport(), transport()
    pacer = Pacing((a, b), Clock()).link(a, b)
    verifyObject(IPushProducer, pacer)
    assert b.producer is pacer and b.streaming
    assert pacer.producer is a
    pacer.pauseProducing()
    assert a.producerState == "paused"
    pacer.resumeProducing()
    assert a.producerState == "producing"
    pacer.stopProducing()
    assert a.producerState == "stopped"


def test_large_once_keep_up_bytes_went_through() -> None:
    a, b, pacing, down, _ = splice()
    down.moved(KEEP_UP - 1)
    assert not pacing.large and a.bufferSize == SMALL  # type: ignore[attr-defined]
    down.moved(1)
    assert pacing.large
    assert (a.bufferSize, b.bufferSize) == (LARGE, LARGE)  # type: ignore[attr-defined]


def test_either_direction_counts_towards_the_first_switch() -> None:
    _, _, pacing, down, up = splice()
    down.moved(KEEP_UP // 2)
    up.moved(KEEP_UP // 2)
    assert pacing.large


def test_a_quick_drain_changes_nothing() -> None:
    # a fast reader fills its buffer too, every few milliseconds on loopback, and drains it
    _, _, pacing, down, _ = splice()
    drain(down, SLOW_DRAIN / 2)
    down.moved(KEEP_UP)
    assert pacing.large
    for _ in range(100):
        drain(down, SLOW_DRAIN / 2)
    assert pacing.large


def test_a_slow_drain_makes_it_small_until_the_direction_has_caught_up() -> None:
    a, b, pacing, down, _ = splice()
    down.moved(KEEP_UP)
    b.full = True
    writes.write(b, b"x")  # over the consumer's bound: it pauses its producer, the pacer
    assert a.producerState == "paused"
    assert pacing.large  # nothing is known yet: it may drain at once
    pacing.clock.advance(SLOW_DRAIN * 2)  # type: ignore[attr-defined]
    b.drain()
    assert a.producerState == "producing"
    assert not pacing.large
    assert (a.bufferSize, b.bufferSize) == (SMALL, SMALL)  # type: ignore[attr-defined]
    down.moved(KEEP_UP - 1)
    assert not pacing.large
    down.moved(1)
    assert pacing.large


def test_a_direction_paused_now_is_not_keeping_up() -> None:
    _, _, pacing, down, up = splice()
    down.pauseProducing()  # a reader that reads nothing: it never drains
    up.moved(10 * KEEP_UP)
    assert not pacing.large
    pacing.clock.advance(1)  # type: ignore[attr-defined]
    down.resumeProducing()
    up.moved(KEEP_UP)
    assert not pacing.large  # it took long: behind
    down.moved(KEEP_UP)
    assert pacing.large


def test_a_slow_drain_while_behind_starts_the_count_again() -> None:
    _, _, pacing, down, _ = splice()
    drain(down, 1)
    down.moved(KEEP_UP - 1)
    drain(down, 1)  # fell behind again before it had caught up
    down.moved(KEEP_UP - 1)
    assert not pacing.large
    down.moved(1)
    assert pacing.large


def test_a_slow_direction_keeps_the_splice_small_whatever_the_other_moves() -> None:
    _, _, pacing, down, up = splice()
    down.moved(KEEP_UP)
    drain(down, 1)  # the reader of this direction is slow
    up.moved(100 * KEEP_UP)  # the other direction is busy and keeps up
    assert not pacing.large
    down.moved(KEEP_UP)
    assert pacing.large


class Backlogs(dict):  # type: ignore[type-arg]
    """What the kernel holds for each transport's socket, as the test says."""

    def __call__(self, transport: object) -> int | None:
        return self.get(id(transport))


def backlogged() -> tuple[FakeTransport, FakeTransport, Pacing, Pacer, Backlogs]:
    a, b = transport(), transport()
    queued = Backlogs()
    pacing = Pacing((a, b), Clock(), Policy(backlog=queued))
    down = pacing.link(a, b)
    pacing.link(b, a)
    return a, b, pacing, down, queued


def test_a_reader_whose_kernel_holds_what_moved_is_not_keeping_up() -> None:
    # the kernel takes megabytes from a reader that reads nothing before any pause
    a, b, pacing, down, queued = backlogged()
    queued[id(b)] = KEEP_UP - 500
    down.moved(KEEP_UP)
    assert not pacing.large
    queued[id(b)] = 2 * KEEP_UP - 1000
    down.moved(KEEP_UP)
    assert not pacing.large
    queued[id(b)] = BACKLOG  # it has read most of it: keeping up
    down.moved(KEEP_UP)
    assert pacing.large


def test_large_buffers_stay_until_a_slow_drain_whatever_the_backlog() -> None:
    # a fast reader's backlog comes and goes (often over a megabyte for a moment on loopback)
    a, b, pacing, down, queued = backlogged()
    down.moved(KEEP_UP)
    assert pacing.large
    queued[id(b)] = 4 * KEEP_UP
    down.moved(4 * KEEP_UP)
    assert pacing.large
    drain(down, 1)
    assert not pacing.large and a.bufferSize == SMALL  # type: ignore[attr-defined]
    down.moved(KEEP_UP)  # caught up by the count, but its socket is still backed up
    assert not pacing.large
    queued[id(b)] = 0
    down.moved(KEEP_UP)
    assert pacing.large


def test_the_other_directions_backlog_counts_too() -> None:
    a, b, pacing, down, queued = backlogged()
    queued[id(a)] = BACKLOG + 1  # the reader on a's side has stopped; b's keeps up
    down.moved(KEEP_UP)
    assert not pacing.large


def loopback_pair() -> tuple[socket.socket, socket.socket]:
    """Both ends of a TCP connection on 127.0.0.1."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        peer = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    return ours, peer


def test_backlog_of_real_sockets() -> None:
    ours, peer = loopback_pair()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        t = tcp.Server(ours, Protocol(), ("127.0.0.1", 1), None, 1, MemoryReactor())
        assert kernel_backlog(t) == 0
        ours.sendall(b"x" * 200_000)  # the peer reads nothing: its window takes little
        assert 200_000 - 65536 < kernel_backlog(t) <= 200_000  # type: ignore[operator]
    finally:
        ours.close()
        peer.close()
    assert kernel_backlog(t) is None  # closed
    assert kernel_backlog(transport()) is None  # no socket at all


def test_sizes_can_be_chosen() -> None:
    a, b = transport(), transport()
    pacing = Pacing((a, b), Clock(), Policy(small=4096, large=8192, keep_up=10))
    pacer = pacing.link(a, b)
    assert a.bufferSize == 4096  # type: ignore[attr-defined]
    pacer.moved(10)
    assert a.bufferSize == 8192  # type: ignore[attr-defined]


# -- tunnels and relayed bodies, in memory ----------------------------------------------------


def connect_head() -> bytes:
    return b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"


def test_tunnel_is_paced_both_ways(h: Harness) -> None:
    c = h.connect()
    c.send(connect_head())
    up = h.accept()
    assert c.take() == ESTABLISHED
    down_pacer, up_pacer = c.transport.producer, up.transport.producer
    assert isinstance(down_pacer, Pacer) and isinstance(up_pacer, Pacer)
    assert down_pacer.producer is up.transport and up_pacer.producer is c.transport
    pacing = down_pacer._pacing
    assert up_pacer._pacing is pacing and not pacing.large
    block = b"d" * 65536
    for _ in range(KEEP_UP // len(block)):
        up.send(block)
    assert pacing.large
    assert c.take() == block * (KEEP_UP // len(block))
    c.transport.full = True  # the client stops reading: the upstream is paused
    up.send(b"more")
    assert up.paused
    h.clock.advance(1)
    c.transport.drain()  # ... for a second: small again
    assert not up.paused and not pacing.large
    c.send(b"u" * KEEP_UP)  # the upload direction keeping up does not make it large ...
    assert not pacing.large
    for _ in range(KEEP_UP // len(block)):  # ... the download direction must catch up
        up.send(block)
    assert pacing.large
    c.lost()
    assert c.transport.producer is None and up.transport.producer is None


def relayed(h: Harness) -> tuple[object, object]:
    c = h.connect()
    c.transport.bufferSize = 65536  # type: ignore[attr-defined]
    c.send(get())
    up = h.accept()
    up.transport.bufferSize = 65536  # type: ignore[attr-defined]
    up.take()
    return c, up


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (PACE_OVER + 1),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",  # until the origin closes
    ],
    ids=["long", "chunked", "close-delimited"],
)
def test_a_large_or_unknown_body_is_paced(h: Harness, head: bytes) -> None:
    c, up = relayed(h)
    up.send(head)  # type: ignore[attr-defined]
    pacer = c.transport.producer  # type: ignore[attr-defined]
    assert isinstance(pacer, Pacer) and pacer.producer is up.transport  # type: ignore[attr-defined]
    assert c.transport.bufferSize == SMALL == up.transport.bufferSize  # type: ignore[attr-defined]
    up.lost()  # type: ignore[attr-defined]
    assert c.transport.producer is None  # type: ignore[attr-defined]
    assert c.transport.bufferSize == 65536 == up.transport.bufferSize  # type: ignore[attr-defined]


def test_a_small_body_is_streamed_as_it_is(h: Harness) -> None:
    c, up = relayed(h)
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % PACE_OVER)  # type: ignore[attr-defined]
    assert c.transport.producer is up.transport  # type: ignore[attr-defined]
    assert c.transport.bufferSize == 65536  # type: ignore[attr-defined]


def test_a_paced_body_goes_large_and_gives_the_pooled_connection_its_size_back(
    h: Harness,
) -> None:
    c, up = relayed(h)
    size = 4 * KEEP_UP
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)  # type: ignore[attr-defined]
    pacing = c.transport.producer._pacing  # type: ignore[attr-defined]
    for _ in range(size // 65536 - 1):
        up.send(b"b" * 65536)  # type: ignore[attr-defined]
    assert pacing.large and up.transport.bufferSize == LARGE  # type: ignore[attr-defined]
    up.send(b"b" * 65536)  # type: ignore[attr-defined]
    assert h.factory.pool.idle_count() == 1
    assert up.transport.bufferSize == 65536  # type: ignore[attr-defined]
    assert len(c.received()) > size  # type: ignore[attr-defined]


# -- real transports on loopback TCP --------------------------------------------------------------


class _Splice(Protocol):
    """What a tunnel does with a producer's bytes: write them to the consumer."""

    to: tcp.Server

    def dataReceived(self, data: bytes) -> None:
        writes.write(self.to, data)


def buffered(t: tcp.Server) -> int:
    """Bytes in the transport's user-space write buffer (Twisted's insides, read by tests)."""
    return len(t.dataBuffer) - t.offset + t._tempDataLen


class Loopback:
    """A source socket -> producer transport -> consumer transport -> reader socket chain on
    two loopback TCP connections; the transports are driven by hand (doRead/doWrite)."""

    def __init__(self, reader_rcvbuf: int | None = None) -> None:
        self.reactor = MemoryReactor()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(2)
        self.source, src_ours = self._pair()
        self.reader, dst_ours = self._pair(reader_rcvbuf)
        splice = _Splice()
        self.producer = tcp.Server(src_ours, splice, ("127.0.0.1", 1), None, 1, self.reactor)
        self.consumer = tcp.Server(dst_ours, Protocol(), ("127.0.0.1", 2), None, 2, self.reactor)
        splice.to = self.consumer
        self.producer.startReading()
        self.sent = hashlib.sha256()
        self.got = hashlib.sha256()
        self.sent_bytes = self.got_bytes = 0
        self.peak = 0
        self.feeding = True

    def _pair(self, rcvbuf: int | None = None) -> tuple[socket.socket, socket.socket]:
        peer = socket.socket()
        if rcvbuf:
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        peer.connect(self._listener.getsockname())
        ours, _ = self._listener.accept()
        peer.setblocking(False)
        ours.setblocking(False)
        return peer, ours

    def close(self) -> None:
        for s in (self.source, self.reader, self.producer.socket, self.consumer.socket):
            s.close()
        self._listener.close()

    def feed(self) -> None:
        """The source sends what its socket takes."""
        block = bytes(range(256)) * 256
        if not self.feeding:
            return
        try:
            while True:
                n = self.source.send(block)
                self.sent.update(block[:n])
                self.sent_bytes += n
                if n < len(block):
                    return
        except BlockingIOError:
            return

    def read(self, limit: int = 1 << 30) -> None:
        """The reader takes up to ``limit`` bytes of what has arrived."""
        while limit > 0:
            try:
                data = self.reader.recv(min(limit, 1 << 20))
            except BlockingIOError:
                return
            if not data:
                return
            self.got.update(data)
            self.got_bytes += len(data)
            limit -= len(data)

    def turn(self, read: int = 1 << 30) -> None:
        """One reactor turn: the producer reads if it is reading, the consumer writes if it has
        something to write; then the reader reads."""
        self.feed()
        if self.producer in self.reactor.readers:
            self.producer.doRead()
        self.peak = max(self.peak, buffered(self.consumer))
        if self.consumer in self.reactor.writers:
            self.consumer.doWrite()
        self.read(read)

    @property
    def paused(self) -> bool:
        return self.producer not in self.reactor.readers


@pytest.fixture
def loop() -> Iterator[Loopback]:
    lo = Loopback(reader_rcvbuf=4096)
    yield lo
    lo.close()


@pytest.fixture
def fast() -> Iterator[Loopback]:
    # a window of its own size: the kernel acknowledges what a reader's window takes, so a
    # reader with megabytes of window looks like a fast one until that is full
    lo = Loopback(reader_rcvbuf=65536)
    yield lo
    lo.close()


def turns_until(lo: Loopback, done: Callable[[], bool], turns: int = 5000) -> None:
    for _ in range(turns):
        if done():
            return
        lo.turn()
    raise AssertionError(f"not done after {turns} turns ({lo.got_bytes} bytes read)")


def stall(lo: Loopback, turns: int = 400) -> None:
    """Turns with a reader that reads nothing, until the producer stays paused."""
    for _ in range(turns):
        lo.turn(read=0)
    assert lo.paused


@pytest.mark.parametrize(("small", "bound"), [(SMALL, 2 * SMALL), (LARGE, 2 * LARGE)])
def test_a_reader_that_reads_nothing_leaves_at_most_a_bound_and_a_read(
    loop: Loopback, small: int, bound: int
) -> None:
    # the second case is the old fixed 256 KiB: what the small buffers are for
    pacing = Pacing((loop.producer, loop.consumer), Clock(), Policy(small=small))
    pacing.link(loop.producer, loop.consumer)
    stall(loop)
    assert small < loop.peak <= bound
    assert buffered(loop.consumer) <= bound


def test_a_fast_reader_gets_large_reads_and_every_byte_in_order(fast: Loopback) -> None:
    pacing = Pacing((fast.producer, fast.consumer), Clock())
    pacing.link(fast.producer, fast.consumer)
    turns_until(fast, lambda: fast.got_bytes >= 3 * KEEP_UP)
    assert pacing.large
    assert fast.producer.bufferSize == LARGE == fast.consumer.bufferSize
    fast.feeding = False  # let the rest through
    turns_until(fast, lambda: fast.got_bytes == fast.sent_bytes)
    assert fast.got.digest() == fast.sent.digest()


def test_a_reader_that_stops_gets_small_buffers_and_must_catch_up_for_large(
    fast: Loopback,
) -> None:
    clock = Clock()
    pacing = Pacing((fast.producer, fast.consumer), clock)
    pacing.link(fast.producer, fast.consumer)
    turns_until(fast, lambda: pacing.large)
    stall(fast, turns=2000)  # the kernel's buffers fill first
    assert buffered(fast.consumer) <= 2 * LARGE
    clock.advance(1)
    turns_until(fast, lambda: not fast.paused)  # it reads again, a second later
    assert not pacing.large
    assert fast.producer.bufferSize == SMALL == fast.consumer.bufferSize
    fast.peak = 0
    for _ in range(200):
        fast.turn(read=4096)  # it reads a little now and then: little is left in user space
        clock.advance(0.01)
    assert not pacing.large
    assert fast.peak <= 2 * SMALL
    before = fast.got_bytes
    turns_until(fast, lambda: pacing.large)  # it reads everything again
    assert fast.got_bytes - before > KEEP_UP
