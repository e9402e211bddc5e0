# -*- test-case-name: tests.test_upgrade -*-
"""HTTP Upgrade through the relay (WebSocket), for the protocols ``[relay] upgrade`` lists.

A relayed HTTP/1.1 request without a body that offers a listed protocol (``Upgrade`` and
``Connection: upgrade``) keeps ``Upgrade``, with the listed offers only, and ``Connection:
upgrade``; the client's reader holds back whatever the client sends behind the head
(:attr:`fwproxy.http1.RequestReader.held`). A :class:`SwitchingResponse` is then the relay's
response side (:mod:`fwproxy.response`):

- the origin's ``101 Switching Protocols`` naming an offered protocol (after the response
  filters, which may still refuse it) goes to the client, and the two connections are spliced
  by a :class:`fwproxy.tunnel.Tunnel` (flow control, half-close, ``timeouts.upgrade_idle``); the
  transaction ends, and is logged ``TCP_MISS/101`` with the bytes both ways, when the tunnel
  closes;
- any other answer is relayed as usual and the client connection stays HTTP: what the client
  sent behind the request is parsed as the next requests, each checked by the rules (never
  passed on raw: no WebSocket smuggling);
- a ``101`` naming a protocol that was not offered is answered ``502``.

The upstream connection of an upgrade attempt never goes back to the pool. Offers of protocols
not listed are dropped; with none left (and for HTTP/1.0, or a request with a body, RFC 9110
§7.8), ``Upgrade`` is stripped as every hop-by-hop field, which is what every request gets
while the list is empty.
"""

from __future__ import annotations

import enum
from typing import Any, Protocol

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from fwproxy import chain, http1
from fwproxy.bodyrelay import FilteredResponseRelay
from fwproxy.hopbyhop import end_to_end
from fwproxy.http1 import ERROR, HEAD, REST, RequestHead, ResponseHead
from fwproxy.message import Headers, Response
from fwproxy.response import Exchange, ResponseRelay
from fwproxy.tunnel import Tunnel


class Upgrading(Exchange, Protocol):
    """What the upgrade uses of its relay transaction (:class:`fwproxy.relay.RelayTransaction`):
    what its response side does, and more."""

    clock: Any
    response: ResponseRelay
    bytes_in: int
    request_done: bool

    def error(self, status: int, message: str) -> None: ...
    def finish(self, keep_alive: bool) -> None: ...


def _tokens(fields: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """The comma-separated values of every ``name`` field, in order."""
    return [t.strip() for k, v in fields if k.lower() == name for t in v.split(b",") if t.strip()]


def _name(protocol: bytes) -> str:
    return protocol.partition(b"/")[0].decode("latin-1").lower()


def listed(protocol: bytes, allowed: frozenset[str]) -> bool:
    """Whether the offer ``protocol`` (``name`` or ``name/version``) is ``allowed``: its name
    (any version) or exactly ``name/version`` is listed; case-insensitive."""
    return _name(protocol) in allowed or protocol.decode("latin-1").lower() in allowed


def offer(head: RequestHead, allowed: frozenset[str]) -> bytes | None:
    """The ``Upgrade`` value to send upstream for ``head``: the client's offers that are
    ``allowed``; None when it is not an upgrade the relay attempts."""
    if not head.upgrade or head.version != "1.1" or not allowed:
        return None
    offers = [t for t in _tokens(head.headers, b"upgrade") if listed(t, allowed)]
    return b", ".join(offers) or None


def refusal(rh: ResponseHead, offered: bytes) -> str | None:
    """What is wrong with the origin's ``101`` to a request that offered ``offered``, or None
    (RFC 9110 §7.8: it names the protocols switched to, each one the client offered)."""
    chosen = _tokens(rh.headers, b"upgrade")
    if not chosen:
        return "upstream's 101 names no protocol"
    names = {_name(t) for t in offered.split(b",") if t.strip()}
    for t in chosen:
        if _name(t) not in names:
            return f"upstream switched to {t.decode('latin-1')!r}, which was not offered"
    return None


def request_fields(txn: Upgrading) -> list[tuple[bytes, bytes]]:
    """The end-to-end fields of ``txn``'s request head, to relay; for a request that attempts
    an upgrade, with ``Upgrade`` (the listed offers) and ``Connection: upgrade`` added, and
    ``txn``'s response side a :class:`SwitchingResponse`."""
    head = txn.head
    fields = end_to_end(head.headers)
    if not head.upgrade:
        return fields
    value = offer(head, txn.proxy.config.relay.upgrade)
    if value is not None:
        # a refused upgrade's answer is relayed as any other: through the body filters too
        kind = FilteredSwitchingResponse if txn.proxy.chain.response_body else SwitchingResponse
        txn.response = kind(txn, value)
        fields += [(b"Upgrade", value), (b"Connection", b"upgrade")]
    return fields


class Phase(enum.IntEnum):
    """Where an upgrade attempt stands: the answer is awaited; a response filter decides on
    the 101; no upgrade (the answer is relayed as HTTP); spliced; the splice has ended."""

    AWAITING = 0
    DECIDING = 1
    RELAYING = 2
    SPLICED = 3
    CLOSED = 4


AWAITING, DECIDING, RELAYING, SPLICED, CLOSED = Phase


class SwitchingResponse(ResponseRelay):
    """The response side of a request that attempts an upgrade: a ``101`` is spliced, any
    other answer relayed as :class:`ResponseRelay` does (see the module docstring). Once
    spliced, it is the tunnel's owner (:class:`fwproxy.tunnel.SpliceOwner`) and upstream end
    (:class:`fwproxy.tunnel.SpliceEnd`)."""

    def __init__(self, txn: Upgrading, offered: bytes) -> None:
        super().__init__(txn)
        self.txn = txn
        self.offered = offered
        self.phase = AWAITING
        self.tunnel: Tunnel | None = None
        #: the upstream's transport, once spliced (the tunnel's upstream stream)
        self.transport: Any = None
        self._deciding: list[http1.Event] = []  # upstream events while a filter decides

    # -- the upstream's handler -------------------------------------------------------------
    def upstream_events(self, events: list[http1.Event]) -> None:
        phase = self.phase
        if phase == SPLICED:
            tunnel = self.tunnel
            if tunnel is not None:
                for kind, data in events:
                    if kind == REST and data:
                        tunnel.upstream_data(data)  # type: ignore[arg-type]
            return
        if phase == DECIDING:
            self._deciding.extend(events)
            return
        if phase == AWAITING:
            for i, (kind, payload) in enumerate(events):
                if kind == HEAD and payload.status == 101:  # type: ignore[attr-defined]
                    if i:
                        super().upstream_events(events[:i])  # the 1xx before it
                    if not self.txn.done:
                        self._switching(payload, events[i + 1 :])  # type: ignore[arg-type]
                    return
                if kind == HEAD or kind == ERROR:
                    self._refused()
                    break
        super().upstream_events(events)

    def upstream_lost(self, reason: Failure) -> None:
        if self.phase == SPLICED:
            if self.tunnel is not None:
                self.tunnel.upstream_lost()
        else:
            super().upstream_lost(reason)

    def _refused(self) -> None:
        """Another answer than 101: relayed as HTTP, on a connection that is not pooled again."""
        self.phase = RELAYING
        up = self.txn.upstream
        if up is not None and up.reader is not None:
            up.reader.keep_alive = False

    # -- the 101 ----------------------------------------------------------------------------
    def _switching(self, rh: ResponseHead, rest: list[http1.Event]) -> None:
        txn = self.txn
        problem = refusal(rh, self.offered)
        if problem is None and not txn.req.headers.get(b"upgrade"):
            problem = "upstream switched protocols unasked"  # a filter took the offer back
        if problem is not None:
            self.phase = CLOSED
            txn.error(502, problem)
            return
        response = Response(101, "", Headers._adopt(end_to_end(rh.headers)))
        response.reason = rh.reason.decode("latin-1")
        hooks = txn.proxy.chain.response
        if not hooks:
            self._splice(rh, response, rest)
            return
        try:
            result = chain.run(hooks, txn.req, response)
        except Exception:
            self.phase = CLOSED
            txn.fail(Failure())
            return
        if not isinstance(result, Deferred):
            self._decided_101(rh, response, rest, result)
            return
        self.phase = DECIDING
        self._deciding = rest
        upstream = txn.upstream
        assert upstream is not None
        upstream.transport.pauseProducing()

        def decided(answer: Response | None) -> None:
            held, self._deciding = self._deciding, []
            upstream.transport.resumeProducing()
            self._decided_101(rh, response, held, answer)

        txn.wait(maybeDeferred(lambda: result), decided)

    def _decided_101(
        self, rh: ResponseHead, response: Response, rest: list[http1.Event], answer: Any
    ) -> None:
        if answer is None:
            self._splice(rh, response, rest)
        else:
            self.phase = CLOSED  # a filter answered instead: no upgrade
            self.txn.replace_response(answer)

    def _splice(self, rh: ResponseHead, response: Response, rest: list[http1.Event]) -> None:
        txn = self.txn
        upstream = txn.upstream
        assert upstream is not None
        # the tunnel owns the upstream connection now: the relay neither pools nor aborts it
        txn.upstream = None
        self.flush()
        value = b", ".join(_tokens(rh.headers, b"upgrade"))
        fields = [*response.headers.fields(), (b"Upgrade", value), (b"Connection", b"upgrade")]
        data = http1.response_head(101, response.reason.encode("latin-1"), fields)
        txn.status = 101
        txn.bytes_out += len(data)
        conn = txn.conn
        conn.write(data)
        self.phase = SPLICED
        self.transport = upstream.transport
        idle = conn.deadline
        idle.restart(txn.proxy.config.timeouts.upgrade_idle, self._idle)
        self.tunnel = tunnel = Tunnel(self, conn.stream, self, idle)
        for kind, payload in rest:
            if kind == REST and payload:
                tunnel.upstream_data(payload)  # type: ignore[arg-type]
        conn.switch_to_raw(tunnel)

    def _idle(self) -> None:
        if self.tunnel is not None:
            self.tunnel.close()

    # -- the tunnel's owner (fwproxy.tunnel.SpliceOwner) -----------------------------------
    @property
    def bytes_in(self) -> int:
        return self.txn.bytes_in

    @bytes_in.setter
    def bytes_in(self, n: int) -> None:
        self.txn.bytes_in = n

    @property
    def bytes_out(self) -> int:
        return self.txn.bytes_out

    @bytes_out.setter
    def bytes_out(self, n: int) -> None:
        self.txn.bytes_out = n

    @property
    def clock(self) -> Any:
        return self.txn.clock

    def tunnel_closed(self) -> None:
        self.phase = CLOSED
        self.tunnel = None
        txn = self.txn
        txn.request_done = True
        txn.finish(False)


class FilteredSwitchingResponse(SwitchingResponse, FilteredResponseRelay):
    """A :class:`SwitchingResponse` for a chain with response body filters: an answer other
    than ``101`` runs them, as it would without the upgrade offer (an ``Upgrade`` field must
    not take a response past them)."""
