# -*- test-case-name: tests.test_peek -*-
"""Peeking at a tunnel's TLS ClientHello: the server name checked on CONNECT, nothing decrypted.

The CONNECT goes as any other (rules on the CONNECT line, resolve, connect, ``200``); then, on
the ports in ``[tunnel] peek_ports``, :class:`HelloPeek` stands between the client and the
:class:`fwproxy.tunnel.Tunnel`: it holds the client's bytes (and keeps the upstream paused, so
nothing of the origin reaches the client) until the ClientHello is complete, then
:class:`PeekingConnectTransaction` decides on it: Encrypted Client Hello (``[tunnel] ech``), a
server name that is not the CONNECT host (``[tunnel] sni_mismatch``: domain fronting), and the
access rules that were postponed to the ClientHello (an ``ssl_sni`` ACL: the destination checks
run again with the server name known). Allowed, the held bytes go upstream and the tunnel
splices as usual; refused (or not TLS, malformed, too slow: ``timeouts.client_hello``), the
client gets a TLS ``access_denied`` alert, the tunnel closes and the record says
``TCP_DENIED/403`` with the server name. Either way the record carries :attr:`sni`.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from fwproxy import chain
from fwproxy.acl import SNI_NOTE, SNI_POSTPONED, client_ip
from fwproxy.bump import bump, decide
from fwproxy.clienthello import ClientHello, ClientHelloParser, HelloError, NotTLS
from fwproxy.config import TunnelConfig
from fwproxy.contracts import RawHandler
from fwproxy.message import Response
from fwproxy.record import TCP_DENIED, TransactionRecord
from fwproxy.tunnel import ConnectTransaction, Tunnel

log = Logger()

#: a fatal TLS ``access_denied`` alert (RFC 8446 §6): what a refused TLS client reads
ACCESS_DENIED_ALERT = b"\x15\x03\x03\x00\x02\x02\x31"
#: ``Request.notes`` key: why a peeked tunnel was refused
DENIED_NOTE = "fwproxy.tunnel_denied"
#: ``Request.notes`` key: the server name is not the CONNECT host (``sni_mismatch = "log"``)
MISMATCH_NOTE = "fwproxy.sni_mismatch"
#: ``Request.notes`` key: the ClientHello carries Encrypted Client Hello
ECH_NOTE = "fwproxy.ech"

# the states of a HelloPeek
PEEKING = "peeking"  # reading the ClientHello
DECIDING = "deciding"  # the ClientHello is in; the destination checks have not answered
OPEN = "open"  # allowed: bytes go to the tunnel
BUMPED = "bumped"  # allowed and bumped ([intercept]): fwproxy.bump.Bump takes the bytes
CLOSED = "closed"  # refused, or the tunnel ended


@dataclass(frozen=True, slots=True)
class Screening:
    """What ``[tunnel]`` says of a ClientHello: ``denied`` why it is refused ("" if it is
    not); ``warning`` what to log about it ("" for nothing)."""

    denied: str = ""
    warning: str = ""


ALLOWED = Screening()


def screen(hello: ClientHello, host: str, settings: TunnelConfig) -> Screening:
    """Judge ``hello`` against the CONNECT ``host`` and the ``[tunnel]`` settings (sans-IO).

    A hello with Encrypted Client Hello is decided by ``ech`` alone: its visible server name is
    the provider's public name, not a mismatch. Otherwise a server name that is not ``host``
    is a mismatch unless ``host`` is an IP literal (a CONNECT to an address names no host) or
    the hello names no server.
    """
    if hello.ech:
        if settings.ech == "deny":
            return Screening('Encrypted Client Hello (tunnel.ech = "deny")')
        return ALLOWED
    sni = hello.sni
    if not sni or client_ip(host) is not None:
        return ALLOWED
    name = host.lower().rstrip(".")
    if sni == name:
        return ALLOWED
    what = f"server name {sni!r} is not the CONNECT host {name!r}"
    if settings.sni_mismatch == "deny":
        return Screening(f'{what} (tunnel.sni_mismatch = "deny")')
    if settings.sni_mismatch == "log":
        return Screening(warning=what)
    return ALLOWED


class HelloPeek:
    """The client connection's :class:`~fwproxy.contracts.RawHandler` while a tunnel waits for
    its ClientHello, and a pass-through to the :class:`Tunnel` once it is allowed."""

    __slots__ = ("txn", "tunnel", "state", "_parser", "_held", "_eof")

    def __init__(self, txn: PeekingConnectTransaction, tunnel: Tunnel, timeout: float) -> None:
        self.txn = txn
        self.tunnel = tunnel
        self.state = PEEKING
        self._parser: ClientHelloParser | None = ClientHelloParser()
        # None once decided: an open tunnel keeps as little as possible
        self._held: list[bytes] | None = []
        self._eof = False
        # the origin waits: nothing of it reaches a client that may yet be refused
        tunnel.upstream_t.pauseProducing()
        txn.deadline.restart(timeout, self._timed_out)

    @property
    def held(self) -> int:
        """Bytes received from the client and not passed on."""
        return sum(map(len, self._held or ()))

    def client_data(self, data: bytes) -> None:
        if self.state is OPEN:
            self.tunnel.client_data(data)
            return
        held, parser = self._held, self._parser
        if held is None or self.tunnel.closed:  # refused, or the origin went away
            self.state = CLOSED
            self._held = self._parser = None
            return
        held.append(data)
        if parser is None:
            return  # deciding: one read at most, the client is paused meanwhile
        try:
            hello = parser.feed(data)
        except NotTLS as e:
            self.txn.refuse(f"not TLS: {e}", alert=False)
            return
        except HelloError as e:
            self.txn.refuse(f"malformed ClientHello: {e}", alert=True)
            return
        if hello is not None:
            self.state = DECIDING
            self._parser = None
            self.txn.hello_received(hello)

    def client_eof(self) -> None:
        if self.state is OPEN:
            self.tunnel.client_eof()
        elif self.state is DECIDING:
            self._eof = True
        elif self.state is PEEKING:
            if self._held:
                self.txn.refuse("the client closed before the end of its ClientHello", True)
            else:  # nothing to decide on: a tunnel that was not used
                self.state = CLOSED
                self.tunnel.close()

    def client_lost(self) -> None:
        self.state = CLOSED
        self._held = self._parser = None
        self.tunnel.client_lost()

    def open(self) -> None:
        """Allowed: pass the held bytes on, let the origin speak, splice from now on."""
        if self.state is CLOSED or self.tunnel.closed:
            return
        self.state = OPEN
        held, self._held = self._held, None
        self.tunnel.upstream_t.resumeProducing()
        if held:
            self.tunnel.client_data(b"".join(held))
        if self._eof and not self.tunnel.closed:
            self.tunnel.client_eof()

    def take(self) -> bytes:
        """Bumped: the held bytes (the ClientHello), for the TLS that answers them."""
        self.state = BUMPED
        held, self._held = self._held, None
        self._parser = None
        return b"".join(held or ())

    def close(self, alert: bool) -> None:
        """Refused: send the TLS alert if ``alert``, close the tunnel."""
        if self.state is CLOSED:
            return
        self.state = CLOSED
        self._held = None
        self._parser = None
        if alert and not self.tunnel.closed:
            self.tunnel.client_t.write(ACCESS_DENIED_ALERT)
        self.tunnel.close()

    def _timed_out(self) -> None:
        if self.state is PEEKING or self.state is DECIDING:
            self.txn.refuse("no ClientHello within timeouts.client_hello", bool(self._held))


class PeekingConnectTransaction(ConnectTransaction):
    """A CONNECT whose tunnel is peeked on ``[tunnel] peek_ports`` (and whenever the access
    rules postponed it to its ClientHello, whatever the ports are now)."""

    #: the peeked ClientHello's server name ("" when it named none); None: not peeked (a class
    #: default, so that a tunnel that is not peeked keeps nothing more)
    sni: str | None = None
    peek: HelloPeek | None = None

    def raw_handler(self, tunnel: Tunnel) -> RawHandler:
        req = self.req
        config = self.proxy.config
        if req.port not in config.tunnel.peek_ports and not req.notes.get(SNI_POSTPONED):
            return tunnel
        self.peek = HelloPeek(self, tunnel, config.timeouts.client_hello)
        return self.peek

    def hello_received(self, hello: ClientHello) -> None:
        """The ClientHello is complete: screen it, then run the postponed rules."""
        req = self.req
        self.sni = hello.sni or ""
        if hello.ech:
            req.notes[ECH_NOTE] = True
        verdict = screen(hello, req.host, self.proxy.config.tunnel)
        if verdict.denied:
            self.refuse(verdict.denied, alert=True)
            return
        if verdict.warning:
            req.notes[MISMATCH_NOTE] = True
            log.warn(
                "fwproxy: tunnel from {client} to {authority}: {warning} "
                '(allowed: tunnel.sni_mismatch = "log")',
                client=self.conn.client[0],
                authority=req.authority,
                warning=verdict.warning,
            )
        if not req.notes.get(SNI_POSTPONED) or not self.proxy.chain.destination:
            self._allowed()
            return
        # the rules again, with the server name and the one address connected to; a check can
        # only allow or refuse now (the tunnel is connected: changing the destination is moot)
        req.notes[SNI_NOTE] = self.sni
        req.addresses = req.addresses[:1] if req.addresses else []
        try:
            result = chain.run(self.proxy.chain.destination, req)
        except Exception:
            self._hello_checked(self._hello_check_failed(Failure()))
            return
        if isinstance(result, Deferred):
            result.addErrback(self._hello_check_failed)
            self.wait(result, self._hello_checked)
        else:
            self._hello_checked(result)

    def _hello_check_failed(self, failure: Failure) -> Response | None:
        if self.done:
            return None  # cancelled by the end of the tunnel (a timeout, the client left)
        log.failure(
            "fwproxy: destination check failed on a ClientHello in {txn!r}", failure, txn=self
        )
        return Response.text(500, "fwproxy: destination check failed")

    def _hello_checked(self, answer: Response | None) -> None:
        if answer is None:
            self._allowed()
        else:
            self.refuse(f"denied by the access rules on server name {self.sni!r}", alert=True)

    def _allowed(self) -> None:
        peek = self.peek
        if peek is None or self.tunnel is None or self.tunnel.closed:
            return
        intercept = self.proxy.config.intercept
        sni = self.sni or ""
        if intercept is not None:
            rule = decide(intercept, self.req, sni, self.clock.seconds(), self.proxy.listening)
            if rule is not None and self.req.notes.get(ECH_NOTE):
                # the real server name is hidden: no certificate can be made for it
                log.info(
                    "fwproxy: tunnel from {client} to {authority}: spliced, not bumped by "
                    "{rule!r}: its ClientHello is encrypted (ECH; the visible server name "
                    "{sni!r} is the provider's)",
                    client=self.conn.client[0],
                    authority=self.req.authority,
                    rule=rule,
                    sni=sni,
                )
            elif rule is not None:
                name = sni or self.req.host
                try:
                    intercept.leaves.context(name)  # made (and cached) before the origin goes
                except ValueError as e:  # e.g. the CA has expired since it was loaded
                    log.error(
                        "fwproxy: tunnel from {client} to {authority}: no certificate can be made "
                        "for {name!r} ({error}); refused, not bumped by {rule!r}",
                        client=self.conn.client[0],
                        authority=self.req.authority,
                        name=name,
                        error=e,
                        rule=rule,
                    )
                    self.refuse(f"no certificate for {name!r}: {e}", alert=True)
                    return
                bump(self, self.tunnel, intercept, sni, peek.take())
                return
        self.deadline.restart(self.proxy.config.timeouts.tunnel_idle, self._idle)
        peek.open()

    def refuse(self, reason: str, alert: bool) -> None:
        """Close the tunnel, logged ``TCP_DENIED/403`` with ``reason`` in the notes."""
        peek = self.peek
        if peek is None or peek.state is CLOSED or self.done:
            return
        self.status = 403
        self.result = TCP_DENIED
        self.req.notes[DENIED_NOTE] = reason
        # counted before closing: the tunnel's end makes the record
        self.bytes_in += peek.held
        if alert:
            self.bytes_out += len(ACCESS_DENIED_ALERT)
        peek.close(alert)

    def record(self) -> TransactionRecord:
        rec = super().record()
        rec.sni = self.sni
        return rec
