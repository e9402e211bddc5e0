# -*- test-case-name: tests.test_protocol -*-
"""A client connection's plumbing, under the HTTP of :mod:`fwproxy.protocol`.

:class:`ClientConnectionBase` counts the connection in and out (:mod:`fwproxy.admission`), learns
the client's final address from its first bytes (behind a PROXY-protocol listener, whose TCP
peer must first be one that may send the header: ``[proxy] proxy_protocol_from``) and runs the
connection filters then (:mod:`fwproxy.gate`), pauses and resumes reading from the client by
named reasons (queued events, a full upstream write buffer, a pending filter, a pending
connection filter: reading resumes only when none is left), writes, and closes. The HTTP side
(requests, transactions, raw bytes) is its subclass's.
"""

from __future__ import annotations

from typing import Any

from mypy_extensions import mypyc_attr
from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from fwproxy import tls, writes
from fwproxy.acl import ClientCert
from fwproxy.admission import Admission
from fwproxy.contracts import PauseReason, ProxyServices, RawHandler, Stream
from fwproxy.gate import ConnectionGate
from fwproxy.timer import Deadline
from fwproxy.twisted_private import reads_proxy_header

_REASONS: dict[str, int] = {"queue": 1, "upstream": 2, "filter": 4, "connection-filter": 8}


@implementer(IPushProducer)
class _ReasonProducer:
    """Lets a consumer (an upstream transport) pause the client under one named reason."""

    def __init__(self, proto: ClientConnectionBase, reason: PauseReason) -> None:
        self._proto = proto
        self._reason: PauseReason = reason

    def pauseProducing(self) -> None:
        self._proto.pause(self._reason)

    def resumeProducing(self) -> None:
        self._proto.resume(self._reason)

    def stopProducing(self) -> None:
        self._proto.stream.loseConnection()


@mypyc_attr(allow_interpreted_subclasses=True)
class ClientConnectionBase(Protocol):
    """Admission, identification, flow control and closing of one client connection."""

    #: a TCP (or TLS, UNIX, PROXY-protocol) transport: IPushProducer and IHalfCloseable too
    transport: Any

    def __init__(self, proxy: ProxyServices, admission: Admission) -> None:
        self.proxy = proxy
        self.admission = admission
        self.raw: RawHandler | None = None
        self.upstream_producer = _ReasonProducer(self, "upstream")
        self.client: tuple[str, int] = ("", 0)
        self.local: tuple[str, int] = ("", 0)
        #: the listener's port, read once in connectionMade (before a PROXY-protocol header)
        self.local_port = 0
        #: the client certificate a TLS listener verified (known from the first bytes on)
        self.client_cert: ClientCert | None = None
        self._pauses = 0  # a bit per reason (see _REASONS)
        self._read_closed = False
        self._closing = False
        self._identified = False
        self._gate: ConnectionGate | None = None  # connection filters deciding
        self._deadline: Deadline | None = None

    # -- the ClientConnection contract ----------------------------------------------------
    @property
    def deadline(self) -> Deadline:
        assert self._deadline is not None
        return self._deadline

    @property
    def stream(self) -> Stream:
        return self.transport  # type: ignore[no-any-return]

    def write(self, data: bytes) -> None:
        writes.write(self.transport, data)

    def pause(self, reason: PauseReason) -> None:
        if not self._pauses and self.transport is not None:
            self.transport.pauseProducing()
        self._pauses |= _REASONS[reason]

    def resume(self, reason: PauseReason) -> None:
        bit = _REASONS[reason]
        if self._pauses & bit:
            self._pauses &= ~bit
            if not self._pauses and self.transport is not None and not self._closing:
                self.transport.resumeProducing()

    # -- connection ------------------------------------------------------------------------
    def connectionMade(self) -> None:
        self._address()
        self.local_port = self.local[1]
        try:
            self.transport.setTcpNoDelay(True)
        except (AttributeError, OSError):
            pass
        if type(self.transport) is not tcp.Server and reads_proxy_header(self.transport):
            # the peer before its PROXY header: a balancer, or someone claiming any address
            senders = self.proxy.config.proxy_protocol_from
            if not self.admission.may_send_header(self.client[0], senders):
                self._closing = True
                self.transport.abortConnection()  # nothing read, nothing sent (as squid)
                return
        refusal = self.admission.admit(self, self.client[0])
        if refusal is not None:
            self._refuse(refusal)
            return
        self._deadline = Deadline(
            self.proxy.reactor, self.proxy.config.timeouts.request_header, self._idle_timeout
        )

    def _address(self) -> None:
        peer, host = self.transport.getPeer(), self.transport.getHost()
        self.client = (getattr(peer, "host", "") or "", getattr(peer, "port", 0) or 0)
        self.local = (getattr(host, "host", "") or "", getattr(host, "port", 0) or 0)

    def _refuse(self, answer: bytes) -> None:
        self._closing = True
        self.transport.write(answer)
        self.transport.loseConnection()

    def _identify(self) -> bool:
        """First bytes from the client: from here its address is final (a PROXY-protocol
        listener has parsed its header by now). Connection filters run here. Returns whether
        the bytes may be read now."""
        self._identified = True
        before = self.client[0]
        if type(self.transport) is not tcp.Server:
            # a wrapper (PROXY protocol) knows the real addresses only now; a plain TCP
            # connection's are those of connectionMade (spares a getsockname per connection)
            self._address()
            # a TLS listener's handshake is over by now: its verified client certificate
            self.client_cert = tls.client_cert(self.transport)
        if self.client[0] != before:
            # a PROXY-protocol header named the real client: count it, not the balancer
            refusal = self.admission.recount(self, self.client[0])
            if refusal is not None:
                self._refuse(refusal)
                return False
        hooks = self.proxy.chain.connection
        if not hooks:
            return True
        gate = ConnectionGate(hooks, self._allowed, self._denied)
        verdict = gate.open(self.client, self.local)
        if verdict is None:  # a hook is deciding: hold what arrives
            self._gate = gate
            self.pause("connection-filter")
        return verdict is True

    def _denied(self) -> None:
        self._gate = None
        self._close()

    def _allowed(self, held: list[bytes]) -> None:
        self._gate = None
        self.resume("connection-filter")
        for data in held:
            self.dataReceived(data)
        if self._read_closed and not self._closing:
            self.readConnectionLost()

    def _close(self) -> None:
        if not self._closing:
            self._closing = True
            self.closing()
            if self._deadline is not None:
                self._deadline.cancel()
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    @property
    def busy_tunnel(self) -> bool:
        return self.raw is not None

    def _idle_timeout(self) -> None:
        """The connection's deadline expired with no request in progress (subclasses)."""

    def closing(self) -> None:
        """The proxy is closing the connection: drop what is queued (subclasses)."""

    def readConnectionLost(self) -> None:
        """The client shut down its write side (subclasses)."""
