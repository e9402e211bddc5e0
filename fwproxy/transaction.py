# -*- test-case-name: tests.test_protocol -*-
"""What every transaction (one request and its answer) shares.

A transaction is made by :mod:`fwproxy.dispatch` for each request head and is fed the rest of
that request's events by its client connection. :class:`Transaction` keeps the bookkeeping
(the log record, answering with a whole :class:`Response`, waiting on Deferreds, finishing) and
uses only the two handles declared in :mod:`fwproxy.contracts`: its client connection and the
proxy's services.
"""

from __future__ import annotations

from typing import Any

from mypy_extensions import mypyc_attr
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from fwproxy import chain, http1
from fwproxy.acl import CLIENT_CERT_NOTE
from fwproxy.contracts import ClientConnection, ProxyServices
from fwproxy.http1 import BODY, END, ERROR, ProtocolError, RequestHead
from fwproxy.message import Request, Response
from fwproxy.record import NONE_NONE, TCP_DENIED, TransactionRecord

log = Logger()

USAGE = (
    "fwproxy is a forward proxy: send absolute-form requests "
    "(curl -x http://PROXY:PORT http://example.com/) or CONNECT host:port "
    "(curl -p -x http://PROXY:PORT https://example.com/)"
)

_FRAMING = (b"content-length", b"connection", b"transfer-encoding")


@mypyc_attr(allow_interpreted_subclasses=True)
class Transaction:
    """Bookkeeping shared by every kind of transaction; on its own it answers the proxy's own
    error pages (a malformed request, a request-header timeout)."""

    #: log this transaction (health checks are not)
    logged = True

    def __init__(self, conn: ClientConnection, proxy: ProxyServices, head: RequestHead) -> None:
        self.conn = conn
        self.proxy = proxy
        #: the connection's deadline (see :attr:`ClientConnection.deadline`)
        self.deadline = conn.deadline
        self.head = head
        self.clock = proxy.reactor
        self.started = self.clock.seconds()
        self.request: Request | None = None
        self.status = 0
        self.result = NONE_NONE
        self.bytes_in = head.size
        self.bytes_out = 0
        self.upstream_address = ""
        #: Squid's hierarchy code and peer when it went through a parent proxy; "" for the
        #: direct way, which the log formats write from :attr:`upstream_address`
        self.hierarchy = ""
        self.content_type = ""
        #: the client has sent the whole request (END seen)
        self.request_done = False
        #: bytes of the request body are still to be received and thrown away
        self.discarding = False
        self.done = False
        #: what the transaction waits for (a hook's, the resolver's or a connection's Deferred)
        self._waiting: Deferred[Any] | None = None

    def start(self) -> None:
        """Begin (subclasses); a bare transaction is only ever :meth:`answer`-ed."""

    # -- events from the client ----------------------------------------------------------
    def accepts(self, kind: int) -> bool:
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
        fields = [(k, v) for k, v in response.headers.fields() if k.lower() not in _FRAMING]
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
            TCP_DENIED if response.status in (403, 407) else self.error_result()
        )
        self.content_type = (response.headers.get(b"content-type") or b"").decode("latin-1")
        self.bytes_out += len(data)
        self.conn.write(data)
        if keep and not self.request_done:
            # a bodiless request whose END is still queued: finish when it is consumed
            self.discarding = True
            return
        self.finish(keep)

    def error_result(self) -> str:
        """The result code logged for the proxy's own answers (subclasses refine)."""
        return NONE_NONE

    def flush(self) -> None:
        """Send output a subclass holds back (see the relay)."""

    # -- waiting on Deferreds (filters, the resolver, connecting) -------------------------
    def deciding(self) -> bool:
        """Whether the request is still being decided on (filters, a dst rule's lookup)."""
        return False

    def wait(self, d: Deferred[Any], callback: Any) -> None:
        """Wait for a hook's (or the resolver's) Deferred; read nothing from the client
        meanwhile. While deciding, the wait is bounded like a connect (504)."""
        self._waiting = d
        conn = self.conn
        conn.pause("filter")
        if self.deciding():
            self.deadline.restart(self.proxy.config.timeouts.connect, self._decide_timeout)

        def done(value: Any) -> None:
            self._waiting = None
            conn.resume("filter")
            if not self.done:
                callback(value)

        def failed(f: Failure) -> None:
            self._waiting = None
            conn.resume("filter")
            if not self.done and not f.check(CancelledError):
                self.fail(f)

        d.addCallback(done).addErrback(failed)

    def run_filters(self, hooks: tuple[Any, ...], then: Any) -> None:
        """Run request (or CONNECT) hooks on :attr:`request`, then ``then(answer)`` —
        synchronously when every hook answers so."""
        request = self.request
        if request is not None:
            request.local_port = self.conn.local_port  # for localport ACLs
            if self.conn.client_cert is not None:
                request.notes[CLIENT_CERT_NOTE] = self.conn.client_cert  # for client_cert ACLs
        try:
            result = chain.run(hooks, self.request) if hooks else None
        except Exception:
            self.fail(Failure())
            return
        if isinstance(result, Deferred):
            self.wait(result, then)
        else:
            then(result)

    def cancel_wait(self) -> None:
        if self._waiting is not None:
            d, self._waiting = self._waiting, None
            d.cancel()

    def _decide_timeout(self) -> None:
        # answer first: finishing cancels the pending Deferred, whose callbacks then see that
        # the transaction is done (a cancelled lookup may otherwise read as "no addresses")
        self.error(504, "timed out deciding on the request (name resolution or a filter)")

    # -- ending ---------------------------------------------------------------------------
    def error(self, status: int, message: str) -> None:
        """Answer ``status`` with a one-line ``message`` (subclasses refine)."""
        self.answer(Response.text(status, f"fwproxy: {message}"), close=True)

    def fail(self, failure: Failure) -> None:
        """An unexpected error (a filter raised): log it, answer 500 if possible."""
        error = failure.value
        if isinstance(error, chain.FilterError):
            log.failure(
                "fwproxy: filter {filter} failed ({hook}) in {txn!r}",
                error.failure,
                filter=error.filter,
                hook=error.hook,
                txn=self,
            )
        else:
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
        self.conn.transaction_finished(self, keep_alive and self.request_done)

    def cleanup(self) -> None:
        """Release timers and upstream resources (subclasses)."""
        self.cancel_wait()

    def record(self) -> TransactionRecord:
        head = self.head
        req = self.request
        cert = self.conn.client_cert
        referer = user_agent = ""
        for k, v in head.headers:
            n = len(k)  # compare lengths first: most fields are neither
            if n == 7 and k.lower() == b"referer":
                referer = v.decode("latin-1")
            elif n == 10 and k.lower() == b"user-agent":
                user_agent = v.decode("latin-1")
        return TransactionRecord(
            client=self.conn.client[0],
            method=head.method.decode("latin-1"),
            target=head.target.decode("latin-1"),
            status=self.status,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            started=self.started,
            duration=max(0.0, self.clock.seconds() - self.started),
            upstream=self.upstream_address,
            hierarchy=self.hierarchy,
            result=self.result,
            # the authenticated user, else the verified client certificate's name
            user=(req.user if req is not None else "") or (cert.name if cert else ""),
            version=head.version,
            content_type=self.content_type,
            referer=referer,
            user_agent=user_agent,
            notes=dict(req.notes) if req is not None and req.notes else {},
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.head.method!r} {self.head.target[:200]!r}>"
