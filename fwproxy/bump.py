# -*- test-case-name: tests.test_bump -*-
"""Bumping a peeked tunnel: fwproxy answers the client's TLS itself and relays what is inside.

When the ``[intercept]`` rules (:mod:`fwproxy.intercept_config`) say ``bump`` for a peeked
CONNECT (:mod:`fwproxy.peek` asks :func:`decide` once the ClientHello is in and allowed), the
tunnel's connection to the origin is closed and :class:`Bump` becomes the client connection's
:class:`fwproxy.contracts.RawHandler`: the client's bytes, the held ClientHello first, go into
a server-side ``TLSMemoryBIOProtocol`` presenting a leaf certificate for the server name (the
CONNECT host when the ClientHello named none; :mod:`fwproxy.leafcerts`), and the decrypted
stream is served by a new client connection whose requests go to the CONNECT authority
through the relay (:mod:`fwproxy.intercepted`), with TLS to the origin verified as any
``https://`` request's. A client that rejects the certificate (it does not trust the CA, or
pins the origin's) is logged in one line naming the client, the host and the alert it sent,
and the tunnel's record says ``tls=rejected`` (``tls=incomplete`` for a client that left
during the handshake without an alert); a bumped tunnel's says ``tls=bumped``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from OpenSSL import SSL
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from fwproxy.acl import client_ip
from fwproxy.filters.acl import request_context
from fwproxy.intercept_config import InterceptConfig
from fwproxy.intercepted import Interception
from fwproxy.leafcerts import BumpedConnection, LeafCerts
from fwproxy.logformat import TLS_NOTE
from fwproxy.message import Request
from fwproxy.tls import ServerConnection, failure_reason
from fwproxy.tunnel import ConnectTransaction, Tunnel

log = Logger()

BUMPED = "bumped"
REJECTED = "rejected"
INCOMPLETE = "incomplete"


def decide(
    intercept: InterceptConfig,
    req: Request,
    sni: str,
    now: float,
    listening: Sequence[tuple[str, int]] = (),
) -> str | None:
    """The text of the ``[intercept]`` rule that bumps ``req``'s tunnel, or None: splice
    (``listening``: the proxy's listening addresses, for ``to_self``). A rule that cannot be
    evaluated splices (and is logged): nothing is decrypted by mistake."""
    addresses = tuple(ip for ip in (client_ip(a) for a in req.addresses or ()) if ip is not None)
    ctx = request_context(req, now, listening, addresses, sni=sni)
    try:
        rule = intercept.policy.bump(ctx)
    except Exception as e:  # noqa: BLE001 - a rule that cannot decide must not decrypt
        log.warn(
            "fwproxy: [intercept] rules could not decide on {authority}: {error!r}; spliced",
            authority=req.authority,
            error=e,
        )
        return None
    return None if rule is None else rule.text


@implementer(IOpenSSLServerConnectionCreator)
class _LeafCreator:
    """The TLS connection for one bumped client: a leaf certificate for ``name``."""

    def __init__(self, leaves: LeafCerts, name: str) -> None:
        self.leaves = leaves
        self.name = name

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return self.leaves.connection(self.name)


class _CountingStream:
    """The client's transport as the TLS layer sees it: what it writes is counted as the
    tunnel's bytes out (the record's, as a spliced tunnel's are); the rest is the transport's."""

    def __init__(self, stream: Any, txn: ConnectTransaction) -> None:
        self._stream = stream
        self._txn = txn

    def write(self, data: bytes) -> None:
        self._txn.bytes_out += len(data)
        self._stream.write(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self._txn.bytes_out += sum(map(len, data))
        self._stream.writeSequence(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class BumpedTLS(BufferingTLSTransport):
    """Twisted's TLS over the client's stream, telling its :class:`Bump` how the handshake
    went (a client that gives up during it rejected the certificate)."""

    bump: Bump | None = None

    def loseConnection(self) -> None:
        super().loseConnection()  # the pending writes, then close_notify
        bump, transport = self.bump, self.transport
        if bump is not None and bump.eof and transport is not None:
            # the client has shut down its side: it will not answer the close_notify, which
            # Twisted's TLS waits for before closing the transport
            transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        conn = self.getHandle()
        bump, self.bump = self.bump, None
        if bump is not None and isinstance(conn, ServerConnection) and not conn.handshake_done:
            bump.rejected(conn)
        super().connectionLost(reason)


class Bump:
    """The client connection's :class:`~fwproxy.contracts.RawHandler` of a bumped tunnel."""

    def __init__(
        self, txn: ConnectTransaction, tunnel: Tunnel, intercept: InterceptConfig, sni: str
    ) -> None:
        self.txn = txn
        req = txn.req
        self.name = sni or req.host
        self.client_t = tunnel.client_t
        interception = Interception(req.host, req.port, sni, req.credentials)
        inner = txn.conn.intercepted(interception)
        # the clock schedules the TLS layer's write flushes (an IReactorTime)
        clock: Any = txn.clock
        factory = TLSMemoryBIOFactory(
            _LeafCreator(intercept.leaves, self.name), False, Factory(), clock
        )
        self.inner = inner
        self.tls = BumpedTLS(factory, inner)
        self.tls.bump = self
        self._alpn_checked = False
        self.ended = False
        #: the client has shut down its side of the connection
        self.eof = False

    def start(self, held: bytes) -> None:
        """Answer the client's TLS, beginning with the ClientHello already received."""
        self.tls.makeConnection(_CountingStream(self.client_t, self.txn))
        self.client_t.resumeProducing()
        if held:
            self.client_data(held)

    def client_data(self, data: bytes) -> None:
        if self.ended:
            return
        self.txn.bytes_in += len(data)
        self.tls.dataReceived(data)
        if not self._alpn_checked:
            self._check_alpn()

    def _check_alpn(self) -> None:
        conn = self.tls.getHandle()
        if not isinstance(conn, BumpedConnection) or not conn.handshake_done:
            return
        self._alpn_checked = True
        if conn.alpn_refused:
            offered = ", ".join(p.decode("latin-1") for p in conn.alpn_refused)
            log.info(
                "fwproxy: bumped tunnel from {client} to {host}: the client offered only "
                "{offered} over ALPN; fwproxy speaks HTTP/1.1 inside (splice it by rule)",
                client=self._client(),
                host=self.name,
                offered=offered,
            )

    def client_eof(self) -> None:
        if self.ended:
            return
        self.eof = True
        conn = self.tls.getHandle()
        if isinstance(conn, SSL.Connection) and conn.get_shutdown() & SSL.SENT_SHUTDOWN:
            # the proxy has closed its side, everything sent (its close_notify is out: a
            # drain, a last answer); the client will not answer with a close_notify of its own
            self.client_t.loseConnection()
            return
        half = IHalfCloseableProtocol(self.inner, None)
        if half is not None:
            half.readConnectionLost()  # the requests in flight still get their answers
        else:
            self.tls.loseConnection()

    def client_lost(self) -> None:
        if self.ended:
            return
        self.ended = True
        self.tls.connectionLost(Failure(ConnectionDone()))
        self.txn.tunnel_closed()

    def rejected(self, conn: ServerConnection) -> None:
        """The handshake did not complete: the client refused the certificate (its alert is
        the handshake's error), or left (or timed out) without a word."""
        req = self.txn.req
        reason = failure_reason(conn)
        if conn.handshake_error is None:
            req.notes[TLS_NOTE] = INCOMPLETE
            what = "the client did not complete the TLS handshake"
        else:
            req.notes[TLS_NOTE] = REJECTED
            what = "the client rejected fwproxy's certificate"
        log.info(
            "fwproxy: bumped tunnel from {client} to {host}: {what}: {reason} (a client that "
            "does not trust the CA, or pins: splice it by an [intercept] rule)",
            client=self._client(),
            host=self.name,
            what=what,
            reason=reason,
        )

    def _client(self) -> str:
        host, port = self.txn.conn.client
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bump(
    txn: ConnectTransaction, tunnel: Tunnel, intercept: InterceptConfig, sni: str, held: bytes
) -> Bump:
    """Bump ``tunnel`` (whose ClientHello, ``held``, named ``sni``): close its upstream,
    answer the client's TLS, relay the requests inside."""
    # the origin's TCP connection is not used: each request inside goes through the relay,
    # over a verified TLS connection of its own (pooled)
    tunnel.closed = True
    tunnel.idle.cancel()
    tunnel.upstream.tunnel = None
    tunnel.pacing.detach()
    tunnel.upstream_t.loseConnection()
    txn.req.notes[TLS_NOTE] = BUMPED
    handler = Bump(txn, tunnel, intercept, sni)
    handler.start(held)
    # after the held bytes: a client that already shut down its side is told so after them
    txn.conn.switch_to_raw(handler)
    return handler
