# -*- test-case-name: tests.test_protocol -*-
"""What every transaction (one request and its answer) shares, and the proxy's own answers.

A transaction is created by the client protocol (:mod:`fwproxy.server`) for each request head
and is fed the rest of that request's events. :class:`Transaction` keeps the bookkeeping
(record, answering with a whole :class:`Response`, finishing); :class:`LocalTransaction` answers
requests addressed to the proxy itself (origin-form): ``/healthz`` and a short usage text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from fwproxy import chain, http1, writes
from fwproxy.http1 import BODY, END, ERROR, ProtocolError, RequestHead
from fwproxy.message import Response
from fwproxy.record import NONE_NONE, TCP_DENIED, TransactionRecord

if TYPE_CHECKING:
    from fwproxy.server import ProxyProtocol

log = Logger()

USAGE = (
    "fwproxy is a forward proxy: send absolute-form requests "
    "(curl -x http://PROXY:PORT http://example.com/) or CONNECT host:port "
    "(curl -p -x http://PROXY:PORT https://example.com/)"
)

HEALTH_PATHS = (b"/healthz",)


class Transaction:
    """Bookkeeping shared by every kind of transaction."""

    #: log this transaction (health checks are not logged)
    logged = True

    def __init__(self, proto: ProxyProtocol, head: RequestHead) -> None:
        self.proto = proto
        self.head = head
        self.clock = proto.factory.reactor
        self.started = self.clock.seconds()
        self.request: Any = None
        self.status = 0
        self.result = NONE_NONE
        self.bytes_in = head.size
        self.bytes_out = 0
        self.upstream_address = ""
        self.content_type = ""
        #: the client has sent the whole request (END seen)
        self.request_done = False
        #: bytes of the request body are still to be received and thrown away
        self.discarding = False
        self.done = False

    # -- events from the client ----------------------------------------------------------
    def accepts(self, kind: int) -> bool:
        """Whether the next client event can be handled now (otherwise it waits, and the
        client is not read from meanwhile)."""
        if kind == ERROR:
            # an error belongs to this request only while it is being received; after that it
            # is the next (pipelined) request's, answered once this one is done
            return not self.request_done
        return self.discarding and (kind == BODY or kind == END)

    def client_event(self, kind: int, payload: Any) -> None:
        if kind == END:
            self.request_done = True
            if self.discarding:
                self.discarding = False
                self.finish(True)
        elif kind == BODY:
            self.bytes_in += len(payload)
        elif kind == ERROR:
            self.client_error(payload)

    def client_error(self, error: ProtocolError) -> None:
        """The rest of the request is malformed."""
        if self.status == 0:
            self.answer(Response.text(error.status, f"fwproxy: {error.message}"), close=True)
        else:
            self.abort()

    def client_lost(self) -> None:
        """The client went away before the transaction ended."""
        if not self.done:
            self.finish(False)

    # -- answering -----------------------------------------------------------------------
    def answer(self, response: Response, close: bool = False) -> None:
        """Send a whole response made here (an error page, a filter's answer), then finish."""
        if self.done:
            return
        self.flush()
        head = self.head
        keep = head.keep_alive and not close and not head.has_body
        fields = list(response.headers.fields())
        fields = [
            (k, v)
            for k, v in fields
            if k.lower() not in (b"content-length", b"connection", b"transfer-encoding")
        ]
        fields.append((b"Content-Length", b"%d" % len(response.body)))
        if not keep:
            fields.append((b"Connection", b"close"))
        elif head.version == "1.0":
            fields.append((b"Connection", b"keep-alive"))
        data = http1.response_head(response.status, response.reason.encode("latin-1"), fields)
        if head.method != b"HEAD":
            data += response.body
        self.status = response.status
        self.result = response.result_code or (
            TCP_DENIED if response.status in (403, 407) else NONE_NONE
        )
        self.content_type = (response.headers.get(b"content-type") or b"").decode("latin-1")
        self.bytes_out += len(data)
        writes.write(self.proto.transport, data)
        if keep and not self.request_done:
            # a bodiless request whose END is still queued: finish when it is consumed
            self.discarding = True
            return
        self.finish(keep)

    # -- waiting on Deferreds (filters, the resolver, connecting) -------------------------
    _waiting: Deferred[Any] | None = None

    def deciding(self) -> bool:
        """Whether the request is still being decided on (filters, a dst rule's lookup)."""
        return False

    def _wait(self, d: Deferred[Any], callback: Any) -> None:
        """Wait for a hook's (or the resolver's) Deferred; read nothing from the client
        meanwhile. While deciding, the wait is bounded like a connect (504)."""
        self._waiting = d
        proto = self.proto
        proto.pause_reason("filter")
        if self.deciding():
            proto.timer.restart(proto.factory.config.timeouts.connect, self._decide_timeout)

        def done(value: Any) -> None:
            self._waiting = None
            proto.resume_reason("filter")
            if not self.done:
                callback(value)

        def failed(f: Failure) -> None:
            self._waiting = None
            proto.resume_reason("filter")
            if not self.done and not f.check(CancelledError):
                self.fail(f)

        d.addCallback(done).addErrback(failed)

    def run_filters(self, hooks: tuple[Any, ...]) -> None:
        """Run the request (or CONNECT) hooks, then ``self._filtered(answer)`` — synchronously
        when every hook answers so."""
        try:
            result = chain.run(hooks, self.request) if hooks else None
        except Exception:
            self.fail(Failure())
            return
        if isinstance(result, Deferred):
            self._wait(result, self._filtered)
        else:
            self._filtered(result)

    def _filtered(self, answer: Response | None) -> None:
        raise NotImplementedError

    # -- finding the destination (shared by the relay and CONNECT) ---------------------------
    timer: Any = None

    def resolve_destination(self) -> None:
        """Resolve ``request.host`` unless a filter already did (the addresses a ``dst`` rule
        checked are the ones connected to), then :meth:`_resolved`."""
        req = self.request
        self.timer = self.proto.timer  # the connection's deadline, idle during a transaction
        if req.addresses is not None:
            self._resolved(req.addresses)
            return
        result = self.proto.factory.resolver.resolve(req.host)
        if isinstance(result, Deferred):
            self._arm_connect()
            self._wait(result, self._resolved)
        else:
            self._resolved(result)

    def _resolved(self, addresses: list[str]) -> None:
        req = self.request
        req.addresses = addresses
        if not addresses:
            self._error(502, f"cannot resolve {req.host}")
        elif self.proto.factory.is_self(addresses, req.port, self.proto.local):
            # a request to the proxy's own address: answered here, never followed
            self.answer(
                Response.text(400, f"fwproxy: {req.authority} is this proxy. {USAGE}"), close=True
            )
        else:
            self.connect_upstream()

    def connect_upstream(self) -> None:
        """Connect to ``request.addresses`` (subclasses)."""
        raise NotImplementedError

    def _arm_connect(self) -> None:
        """Name resolution and connecting (not needed for a pooled connection) share one
        ``timeouts.connect`` budget."""
        timer = self.timer
        if timer is not None and timer.expired != self._connect_timeout:
            timer.restart(self.proto.factory.config.timeouts.connect, self._connect_timeout)

    def _connect_timeout(self) -> None:
        if self._waiting is not None:
            d, self._waiting = self._waiting, None
            d.cancel()
        self._error(504, f"timed out connecting to {self.request.authority}")

    def _decide_timeout(self) -> None:
        # answer first: finishing cancels the pending Deferred, whose callbacks then see that
        # the transaction is done (a cancelled lookup may otherwise read as "no addresses")
        self._error(504, "timed out deciding on the request (name resolution or a filter)")

    def _connect_failed(self, f: Failure) -> None:
        """Connecting upstream failed: refused or unreachable → 502, timed out → 504."""
        self._waiting = None
        if self.done or f.check(CancelledError):
            return  # whoever cancelled has answered
        authority = self.request.authority
        if f.check(ierror.TimeoutError, ierror.ConnectingCancelledError, ierror.UserError):
            self._error(504, f"timed out connecting to {authority}")
        elif f.check(ierror.ConnectionRefusedError):
            self._error(502, f"connection to {authority} refused")
        else:
            self._error(502, f"cannot connect to {authority}: {f.getErrorMessage()}")

    def _error(self, status: int, message: str) -> None:
        """Answer ``status`` with a one-line ``message`` (subclasses refine)."""
        self.answer(Response.text(status, f"fwproxy: {message}"), close=True)

    def flush(self) -> None:
        """Send output a subclass holds back (see RelayTransaction)."""

    def fail(self, failure: Failure) -> None:
        """An unexpected error (a filter raised): log it, answer 500 if possible."""
        log.failure("fwproxy: error in transaction {txn!r}", failure, txn=self)
        if self.status == 0 and not self.done:
            self.answer(Response.text(500, "fwproxy: internal error"), close=True)
        else:
            self.abort()

    def stalled(self) -> None:
        """Nothing re-armed the connection's deadline in time (a filter never answered)."""
        if self.status == 0 and not self.done:
            self.answer(
                Response.text(503, "fwproxy: timed out deciding on the request"), close=True
            )
        else:
            self.abort()

    def abort(self) -> None:
        """Give up: close the client connection without completing the response."""
        if not self.done:
            self.finish(False)

    def finish(self, keep_alive: bool) -> None:
        if self.done:
            return
        self.done = True
        self.cleanup()
        self.proto.transaction_finished(self, keep_alive and self.request_done)

    def cleanup(self) -> None:
        """Release timers and upstream resources (subclasses)."""

    def record(self) -> TransactionRecord:
        head = self.head
        req = self.request
        referer = user_agent = ""
        for k, v in head.headers:
            lk = k.lower()
            if lk == b"referer":
                referer = v.decode("latin-1")
            elif lk == b"user-agent":
                user_agent = v.decode("latin-1")
        return TransactionRecord(
            client=self.proto.client[0],
            method=head.method.decode("latin-1"),
            target=head.target.decode("latin-1"),
            status=self.status,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            started=self.started,
            duration=max(0.0, self.clock.seconds() - self.started),
            upstream=self.upstream_address,
            result=self.result,
            user=req.user if req is not None else "",
            version=head.version,
            content_type=self.content_type,
            referer=referer,
            user_agent=user_agent,
            notes=dict(req.notes) if req is not None else {},
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.head.method!r} {self.head.target[:200]!r}>"


class LocalTransaction(Transaction):
    """A request addressed to the proxy itself: health check or usage text."""

    def start(self) -> None:
        path = self.head.target.split(b"?", 1)[0]
        if path in HEALTH_PATHS and self.head.method in (b"GET", b"HEAD"):
            self.logged = False
            self.answer(Response.text(200, "ok"))
        else:
            self.answer(Response.text(400, USAGE), close=True)
