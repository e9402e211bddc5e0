# -*- test-case-name: tests.test_tunnel -*-
"""CONNECT: check, resolve, connect, answer ``200 Connection established``, then splice.

A :class:`Tunnel` joins two flow-controlled byte streams: each side's transport is registered
(through a :class:`fwproxy.streaming.Pacer`) as the streaming producer of the other's, so a slow
reader on one side pauses reading on the other and little piles up in the proxy: large reads
only while both sides keep up (:mod:`fwproxy.streaming`). Half-closes pass through (``IHalfCloseableProtocol``
on both sides): when one side shuts down its write side, the proxy shuts down its write side
towards the other, and the tunnel closes when both directions have ended. A TLS layer can sit
on either stream (a ``TLSMemoryBIOProtocol`` wrapping either side) without the splice changing.

Through a parent proxy (:mod:`fwproxy.routing`), the upstream is a CONNECT to the parent
(:class:`ParentTunnelUpstream`), answered 2xx before the client gets its ``200``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from fwproxy import http1, writes
from fwproxy.contracts import ClientConnection, ProxyServices, RawHandler, Stream
from fwproxy.destination import RoutedTransaction
from fwproxy.http1 import END, ERROR, RequestHead
from fwproxy.message import Headers, Request, Response
from fwproxy.parents import ConnectReply, ParentError, ParentRefused, connect_head
from fwproxy.record import TCP_TUNNEL, TCP_TUNNEL_ABORTED
from fwproxy.streaming import Pacing
from fwproxy.target import parse_authority
from fwproxy.timer import Deadline
from fwproxy.upstream import ConnectingProtocol, connect_tcp

ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


@implementer(IHalfCloseableProtocol)
class TunnelUpstream(ConnectingProtocol):
    """The proxy's connection to a CONNECT target; forwards everything to its tunnel."""

    tunnel: Tunnel | None = None
    transport: Any

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.upstream_data(data)

    def readConnectionLost(self) -> None:
        if self.tunnel is not None:
            self.tunnel.upstream_eof()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._made is not None and self._never_ready(reason):
            return  # TLS or a parent's answer never came: the attempt failed
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is not None:
            tunnel.upstream_lost()


class ParentTunnelUpstream(TunnelUpstream):
    """A tunnel's connection through a parent proxy: once connected (over TLS: once the
    handshake is done), it sends ``head`` (a CONNECT, :func:`fwproxy.parents.connect_head`) and
    is ready only when the parent answers 2xx; another answer fails the attempt with
    :class:`fwproxy.parents.ParentRefused`. Bytes behind the answer go to the tunnel first."""

    def __init__(self, head: bytes) -> None:
        self._head = head
        self._reply: ConnectReply | None = ConnectReply()

    def _ready(self) -> None:
        self.transport.write(self._head)

    def dataReceived(self, data: bytes) -> None:
        reply = self._reply
        if reply is None:
            super().dataReceived(data)
            return
        try:
            if not reply.feed(data):
                return
        except ParentError as e:
            self._refused(Failure(e))
            return
        self._reply = None
        if not 200 <= reply.status < 300:
            self._refused(Failure(ParentRefused(reply.status, reply.reason)))
            return
        super()._ready()
        if reply.rest and self.tunnel is not None:
            self.tunnel.upstream_data(reply.rest)

    def _refused(self, failure: Failure) -> None:
        self._reply = None
        made, self._made = self._made, None
        if made is not None and not made.called:
            made.errback(failure)
        self.transport.loseConnection()


class SpliceOwner(Protocol):
    """What a tunnel uses of the transaction it belongs to (a CONNECT's, an upgrade's)."""

    bytes_in: int
    bytes_out: int

    @property
    def clock(self) -> Any: ...

    def tunnel_closed(self) -> None: ...


class SpliceEnd(Protocol):
    """The upstream end of a tunnel: it hands its bytes to :attr:`tunnel` while set."""

    tunnel: Tunnel | None
    transport: Any


class Tunnel:
    """Splices the client's stream and the upstream's, with flow control and half-close; the
    client connection's :class:`fwproxy.contracts.RawHandler` once the CONNECT succeeded."""

    # one per open tunnel, which may be idle for long: no instance dict
    __slots__ = ("txn", "upstream", "client_t", "upstream_t", "_client_eof", "_upstream_eof",
                 "closed", "pacing", "idle")  # fmt: skip

    def __init__(
        self, txn: SpliceOwner, client: Stream, upstream: SpliceEnd, idle: Deadline
    ) -> None:
        self.txn = txn
        self.upstream = upstream
        self.client_t = client
        self.upstream_t: Stream = upstream.transport
        self._client_eof = False
        self._upstream_eof = False
        self.closed = False
        upstream.tunnel = self
        # each side's transport, through a pacer, is the producer of the other's
        self.pacing = pacing = Pacing((self.client_t, self.upstream_t), txn.clock)
        pacing.link(self.client_t, self.upstream_t)
        pacing.link(self.upstream_t, self.client_t)
        self.idle = idle

    def client_data(self, data: bytes) -> None:
        self.txn.bytes_in += len(data)
        self.idle.touch()
        writes.write(self.upstream_t, data)

    def upstream_data(self, data: bytes) -> None:
        self.txn.bytes_out += len(data)
        self.idle.touch()
        writes.write(self.client_t, data)

    def client_eof(self) -> None:
        self._client_eof = True
        if self._upstream_eof:
            self.close()
        else:
            self.upstream_t.loseWriteConnection()

    def upstream_eof(self) -> None:
        self._upstream_eof = True
        if self._client_eof:
            self.close()
        else:
            self.client_t.loseWriteConnection()

    def client_lost(self) -> None:
        # Once the 200 is out the tunnel is TCP_TUNNEL however it ends, as in Squid
        # (src/tunnel.cc): a client that closes with bytes unread (urllib after reading only a
        # response head) makes its kernel send a reset after a complete exchange.
        self.close()

    def upstream_lost(self) -> None:
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.idle.cancel()
        self.upstream.tunnel = None
        self.pacing.detach()
        self.upstream_t.loseConnection()
        self.client_t.loseConnection()
        self.txn.tunnel_closed()


class ConnectTransaction(RoutedTransaction):
    """A CONNECT request: from its head to the end of its tunnel."""

    def __init__(self, conn: ClientConnection, proxy: ProxyServices, head: RequestHead) -> None:
        super().__init__(conn, proxy, head)
        self.tunnel: Tunnel | None = None
        self.result = TCP_TUNNEL

    def accepts(self, kind: int) -> bool:
        if kind == ERROR:
            return not self.request_done
        return kind == END

    def start(self) -> None:
        head = self.head
        try:
            host, port = parse_authority(head.target)
        except (ValueError, UnicodeDecodeError) as e:
            self.answer(Response.text(400, f"fwproxy: bad CONNECT target: {e}"), close=True)
            return
        self.request = request = Request(
            "CONNECT",
            head.target.decode("ascii"),
            host,
            port,
            b"",
            Headers._adopt(http1.end_to_end(head.headers)),
            head.version,
            self.conn.client,
        )
        request.credentials = http1.proxy_credentials(head.headers)
        self.run_filters(self.proxy.chain.connect, self.destination_decided)

    def deciding(self) -> bool:
        return not self._connecting and self.status == 0

    _connecting = False

    def close_after_answer(self) -> bool:
        return True

    def routing(self) -> None:
        self._connecting = True

    def connect_upstream(self) -> None:
        req = self.req
        self.arm_connect()
        parent = self.parent
        build: Callable[[], TunnelUpstream] = TunnelUpstream
        tls = None
        if parent is None:
            address, port = req.addresses[0], req.port  # type: ignore[index]
        else:
            address, port = self.parent_addresses[0], parent.port
            head = connect_head(req.authority, parent.credentials)
            build = partial(ParentTunnelUpstream, head)
            if parent.tls:
                tls = (self.proxy.pool.origination, parent.host)
        self.upstream_address = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        timeout = self.proxy.config.timeouts.connect
        d = connect_tcp(self.clock, address, port, build, timeout, tls)
        self._waiting = d
        d.addCallbacks(self._connected, self.connect_failed)

    def error(self, status: int, message: str) -> None:
        # a CONNECT that could not connect is TCP_TUNNEL/502 or /504 (Squid 7 logs failed
        # tunnels as TCP_TUNNEL), as a relayed request is TCP_MISS/502 or /504
        self.upstream_address = ""
        self.answer(Response.text(status, f"fwproxy: {message}", TCP_TUNNEL), close=True)

    def _connected(self, upstream: TunnelUpstream) -> None:
        self._waiting = None
        if self.done:
            upstream.transport.loseConnection()
            return
        if self.parent is not None:
            self.parent_connected(True)
        self.status = 200
        self.bytes_out += len(ESTABLISHED)
        conn = self.conn
        conn.write(ESTABLISHED)
        # the connection's deadline becomes the tunnel's idle timeout
        idle = conn.deadline
        idle.restart(self.proxy.config.timeouts.tunnel_idle, self._idle)
        self.tunnel = Tunnel(self, conn.stream, upstream, idle)
        self._release_head()
        conn.switch_to_raw(self.raw_handler(self.tunnel))

    def raw_handler(self, tunnel: Tunnel) -> RawHandler:
        """What takes the client's bytes once the tunnel is up: the tunnel itself, or a handler
        a subclass puts in front of it (:class:`fwproxy.peek.HelloPeek`)."""
        return tunnel

    def _idle(self) -> None:
        if self.tunnel is not None:
            self.tunnel.close()

    def _release_head(self) -> None:
        """The tunnel is up: keep of the request only what its log record needs."""
        keep = (b"user-agent", b"referer")
        self.head.headers = [(k, v) for k, v in self.head.headers if k.lower() in keep]
        self.req.headers = Headers()

    def tunnel_closed(self) -> None:
        self.request_done = True
        self.finish(False)

    def client_lost(self) -> None:
        if self.tunnel is not None:
            self.tunnel.client_lost()
        else:
            self.result = TCP_TUNNEL_ABORTED if self.status == 0 else self.result
            super().client_lost()

    def stalled(self) -> None:
        if self.tunnel is not None:
            self.tunnel.close()
        else:
            super().stalled()
