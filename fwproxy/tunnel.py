# -*- test-case-name: tests.test_tunnel -*-
"""CONNECT: check, resolve, connect, answer ``200 Connection established``, then splice.

A :class:`Tunnel` joins two flow-controlled byte streams: each side's transport is registered
as the streaming producer of the other's, so a slow reader on one side pauses reading on the
other and nothing piles up in the proxy. Half-closes pass through (``IHalfCloseableProtocol``
on both sides): when one side shuts down its write side, the proxy shuts down its write side
towards the other, and the tunnel closes when both directions have ended. A TLS layer can sit
on either stream (a ``TLSMemoryBIOProtocol`` wrapping either side) without the splice changing.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from fwproxy import http1, writes
from fwproxy.http1 import END, ERROR, REST
from fwproxy.message import Headers, Request, Response
from fwproxy.record import TCP_TUNNEL, TCP_TUNNEL_ABORTED
from fwproxy.timer import Deadline
from fwproxy.transaction import Transaction
from fwproxy.upstream import ConnectingProtocol, connect_tcp

ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


def parse_authority(target: bytes) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → ``(host, port)``; raise ValueError otherwise."""
    t = target.decode("ascii")
    if t.startswith("["):
        end = t.find("]")
        if end < 0 or t[end + 1 : end + 2] != ":":
            raise ValueError("bad IPv6 authority")
        host, port_s = t[1:end], t[end + 2 :]
        if ":" not in host:
            raise ValueError("brackets around a non-IPv6 host")
    else:
        host, sep, port_s = t.rpartition(":")
        if not sep or not host or ":" in host:
            raise ValueError("CONNECT needs host:port")
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError("bad port")
    if any(c in host for c in " /\\@?#"):
        raise ValueError("bad host")
    return host.lower(), int(port_s)


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
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is not None:
            tunnel.upstream_lost()


class Tunnel:
    """Splices the client's transport and the upstream's, with flow control and half-close."""

    def __init__(self, txn: ConnectTransaction, upstream: TunnelUpstream, idle: float) -> None:
        self.txn = txn
        self.proto = txn.proto
        self.upstream = upstream
        self.client_t: Any = self.proto.transport
        self.upstream_t: Any = upstream.transport
        self._client_eof = False
        self._upstream_eof = False
        self.closed = False
        upstream.tunnel = self
        writes.bulk(self.client_t, self.upstream_t)
        self.upstream_t.registerProducer(self.client_t, True)
        self.client_t.registerProducer(self.upstream_t, True)
        # the connection's deadline becomes the tunnel's idle timeout
        self.idle = self.proto.timer
        self.idle.restart(idle, self.close)

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
        # an established tunnel stays TCP_TUNNEL however it ends, as in Squid: a client that
        # closes with bytes unread resets instead of sending FIN, after a complete exchange
        self.close()

    def upstream_lost(self) -> None:
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.idle.cancel()
        self.upstream.tunnel = None
        for t in (self.client_t, self.upstream_t):
            try:
                t.unregisterProducer()
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.upstream_t.loseConnection()
        self.client_t.loseConnection()
        self.txn.tunnel_closed()


class ConnectTransaction(Transaction):
    """A CONNECT request: from its head to the end of its tunnel."""

    def __init__(self, proto: Any, head: http1.RequestHead) -> None:
        super().__init__(proto, head)
        self.tunnel: Tunnel | None = None
        self._waiting: Deferred[Any] | None = None
        self.timer: Deadline | None = None
        self._early: list[bytes] = []
        self.result = TCP_TUNNEL

    def accepts(self, kind: int) -> bool:
        if kind == ERROR:
            return not self.request_done
        return kind == END or (kind == REST and self.tunnel is not None)

    def client_event(self, kind: int, payload: Any) -> None:
        if kind == REST:
            if payload:
                self.tunnel.client_data(payload)  # type: ignore[union-attr]
        else:
            super().client_event(kind, payload)

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
            self.proto.client,
        )
        request.credentials = http1.proxy_credentials(head.headers)
        self.run_filters(self.proto.factory.chain.connect)

    def deciding(self) -> bool:
        return self.timer is None and self.status == 0

    def _filtered(self, answer: Response | None) -> None:
        if answer is not None:
            self.answer(answer, close=True)
            return
        self.resolve_destination()

    def connect_upstream(self) -> None:
        req = self.request
        self._arm_connect()
        address = req.addresses[0]
        self.upstream_address = (
            f"[{address}]:{req.port}" if ":" in address else f"{address}:{req.port}"
        )
        timeout = self.proto.factory.config.timeouts.connect
        d = connect_tcp(self.clock, address, req.port, TunnelUpstream, timeout)
        self._waiting = d
        d.addCallbacks(self._connected, self._connect_failed)

    def _error(self, status: int, message: str) -> None:
        # the handling path (TCP_TUNNEL), as a relayed request's is TCP_MISS; the status says
        # what failed (Squid 7: "Bug 5148: Log %Ss of failed tunnels as TCP_TUNNEL")
        self.upstream_address = ""
        self.answer(Response.text(status, f"fwproxy: {message}", TCP_TUNNEL), close=True)

    def _connected(self, upstream: TunnelUpstream) -> None:
        self._waiting = None
        if self.done:
            upstream.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.status = 200
        self.bytes_out += len(ESTABLISHED)
        self.proto.transport.write(ESTABLISHED)
        idle = self.proto.factory.config.timeouts.tunnel_idle
        self.tunnel = self.proto.start_tunnel(self, upstream, idle)

    def release_head(self) -> None:
        """The tunnel is up: keep of the request only what its log record needs."""
        keep = (b"user-agent", b"referer")
        self.head.headers = [(k, v) for k, v in self.head.headers if k.lower() in keep]
        self.request.headers = Headers()

    def tunnel_closed(self) -> None:
        self.request_done = True
        self.finish(False)

    def client_lost(self) -> None:
        if self.tunnel is not None:
            self.tunnel.client_lost()
        else:
            self.result = TCP_TUNNEL_ABORTED if self.status == 0 else self.result
            super().client_lost()

    def cleanup(self) -> None:
        if self.timer is not None and self.tunnel is None:
            self.timer.expired = lambda: None  # the connection re-arms or cancels it
        if self._waiting is not None:
            d, self._waiting = self._waiting, None
            d.cancel()
