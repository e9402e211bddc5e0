# -*- test-case-name: tests.test_destination -*-
"""From filtered request to connected upstream, shared by the relay and CONNECT.

After the request (or CONNECT) hooks have run, :class:`RoutedTransaction`:

1. has the destination checked again if a filter changed it after the access rules allowed it
   (``host``, ``port`` or ``addresses`` differ from :attr:`Request.checked`): a filter can route
   a request elsewhere, but never around the access rules and the SSRF guard, and never silently
   without effect;
2. chooses the route (:mod:`fwproxy.routing`: the ``IUpstreamSelector`` filters, then the
   ``[routing]`` rules; nothing is asked when there are none): direct, or through parent
   proxies, each resolved and connected to in turn (its own ``timeouts.connect``) until one
   works, the failures counted towards marking it down; the destination itself is then
   neither resolved nor connected to;
3. directly: resolves the host unless a filter (the ``acl`` filter, for a ``dst`` rule) already
   did, so the addresses checked are the addresses connected to, and refuses a forwarding loop
   (a destination that is this proxy);
4. connects (the subclass's :meth:`connect_upstream`), answering 502 for a refused or failed
   connection (or a TLS handshake that failed: the reason is in the answer, in
   ``notes["fwproxy.tls_error"]`` and in a warning logged) and 504 for one that timed out, with
   one ``timeouts.connect`` budget for name resolution and connecting.
"""

from __future__ import annotations

from typing import Any

from mypy_extensions import mypyc_attr
from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from fwproxy import chain
from fwproxy.message import Request, Response
from fwproxy.origination import TLSFailed
from fwproxy.parents import Parent, ParentRefused
from fwproxy.routing import Attempts, Route
from fwproxy.transaction import USAGE, Transaction

log = Logger()

#: where a failed TLS handshake's reason is kept in ``Request.notes`` (and the log record's)
TLS_ERROR = "fwproxy.tls_error"


@mypyc_attr(allow_interpreted_subclasses=True)
class RoutedTransaction(Transaction):
    """A transaction that goes upstream: a relayed request or a CONNECT."""

    @property
    def req(self) -> Request:
        """:attr:`request`, which a routed transaction has from its :meth:`start` on."""
        req = self.request
        assert req is not None, "a routed transaction's request is made by start()"
        return req

    #: the parent being connected through (or used), and its addresses (class defaults: a
    #: direct CONNECT sets nothing; the relay sets ``parent`` per request, which is cheaper
    #: to read back than a class attribute)
    parent: Parent | None = None
    parent_addresses: list[str] = []
    _attempts: Attempts | None = None

    def destination_decided(self, answer: Response | None) -> None:
        """The request (or CONNECT) hooks have run: answer, or go on to the destination."""
        if answer is not None:
            self.answer(answer, close=self.close_after_answer())
            return
        self.routing()
        req = self.req
        checks = self.proxy.chain.destination
        if checks and req.checked != req.destination:
            self._recheck(checks)
        elif self.proxy.routes.active:
            self.choose_route()
        else:
            self.resolve_destination()

    def close_after_answer(self) -> bool:
        """Whether a filter's answer closes the connection (a CONNECT's does)."""
        return False

    def routing(self) -> None:
        """The request is allowed: it now waits on its destination (subclasses' state)."""

    def _recheck(self, checks: tuple[Any, ...]) -> None:
        req = self.req
        checked = req.checked
        if (
            checked is not None
            and checked[:2] != (req.host, req.port)
            and req.destination[2] == checked[2]
        ):
            # a filter moved the request to another host or port but kept the old host's
            # addresses: they say nothing about the new destination
            req.addresses = None
        try:
            result = chain.run(checks, req)
        except Exception:
            self.fail(Failure())
            return
        if isinstance(result, Deferred):
            self.wait(result, self._rechecked)
        else:
            self._rechecked(result)

    def _rechecked(self, answer: Response | None) -> None:
        if answer is not None:
            self.answer(answer, close=self.close_after_answer())
        elif self.proxy.routes.active:
            self.choose_route()
        else:
            self.resolve_destination()

    # -- the route: direct, or through parent proxies (fwproxy.routing) -------------------
    def choose_route(self) -> None:
        """Ask the ``IUpstreamSelector`` filters, then the ``[routing]`` rules (only called
        when there are some: without, every request goes direct at no cost)."""
        try:
            result = self.proxy.routes.select(self.req)
        except Exception:
            self.fail(Failure())
            return
        if isinstance(result, Deferred):
            self.arm_connect()
            self.wait(result, self._routed)
        else:
            self._routed(result)

    def _routed(self, route: Route) -> None:
        if route.direct:
            self.resolve_destination()
            return
        self._attempts = Attempts(route, self.proxy.routes.health)
        self._next_parent()

    def _next_parent(self) -> None:
        """Resolve the next parent that is up (its own ``timeouts.connect`` budget), then
        connect through it; answer when none is left."""
        assert self._attempts is not None
        parent = self.parent = self._attempts.next()
        if parent is None:
            attempts = self._attempts
            self.error(attempts.status, f"no parent proxy could be used: {attempts.summary()}")
            return
        self.deadline.restart(self.proxy.config.timeouts.connect, self._parent_timeout)
        result = self.proxy.resolver.resolve(parent.host)
        if isinstance(result, Deferred):
            self.wait(result, self._parent_resolved)
        else:
            self._parent_resolved(result)

    def _parent_resolved(self, addresses: list[str]) -> None:
        parent = self.parent
        assert parent is not None
        if not addresses:
            self.parent_failed(f"cannot resolve {parent.host}")
        elif self.proxy.is_self(addresses, parent.port, self.conn.local):
            self.error(502, f"parent {parent} is this proxy")
        else:
            self.parent_addresses = addresses
            self.connect_upstream()

    def _parent_timeout(self) -> None:
        self.cancel_wait()
        self.parent_failed("timed out", timed_out=True)

    def parent_failed(self, reason: str, timed_out: bool = False) -> None:
        """Connecting through :attr:`parent` failed: count it, try the next one."""
        parent, attempts = self.parent, self._attempts
        assert parent is not None and attempts is not None
        attempts.failed(parent, reason, timed_out)
        log.warn(
            "fwproxy: parent {parent} failed ({client} {method} {target}): {reason}",
            parent=str(parent),
            client=self.conn.client[0],
            method=self.req.method,
            target=self.req.url,
            reason=reason,
        )
        self.upstream_address = ""
        self._next_parent()

    def parent_connected(self, fresh: bool) -> None:
        """Connected through :attr:`parent` (``fresh``: a new connection, which says it is
        up); the log shows the hierarchy code."""
        parent = self.parent
        assert parent is not None
        self.hierarchy = "FIRSTUP_PARENT/" + parent.host
        if fresh:
            self.proxy.routes.health.succeeded(parent)

    def hop_addresses(self) -> list[str]:
        """Where the next hop is: the parent's addresses, or the destination's."""
        if self.parent is not None:
            return self.parent_addresses
        return self.req.addresses or [""]

    def restart_connect(self) -> None:
        """A fresh ``timeouts.connect`` budget to connect again (a stale pooled connection)."""
        timeout = self.proxy.config.timeouts.connect
        expired = self._connect_timeout if self.parent is None else self._parent_timeout
        self.deadline.restart(timeout, expired)

    def resolve_destination(self) -> None:
        """Resolve ``request.host`` unless a filter already did, then :meth:`_resolved`."""
        req = self.req
        if req.addresses is not None:
            self._resolved(req.addresses)
            return
        result = self.proxy.resolver.resolve(req.host)
        if isinstance(result, Deferred):
            self.arm_connect()
            self.wait(result, self._resolved)
        else:
            self._resolved(result)

    def _resolved(self, addresses: list[str]) -> None:
        req = self.req
        req.addresses = addresses
        if not addresses:
            self.error(502, f"cannot resolve {req.host}")
        elif self.proxy.is_self(addresses, req.port, self.conn.local):
            # a request to the proxy's own address: answered here, never followed
            self.answer(
                Response.text(400, f"fwproxy: {req.authority} is this proxy. {USAGE}"), close=True
            )
        else:
            self.connect_upstream()

    def connect_upstream(self) -> None:
        """Connect to ``request.addresses`` (subclasses)."""
        raise NotImplementedError

    def arm_connect(self) -> None:
        """Name resolution and connecting (not needed for a pooled connection) share one
        ``timeouts.connect`` budget (through parents: one for each parent)."""
        deadline = self.deadline
        if self.parent is None and deadline.expired != self._connect_timeout:
            deadline.restart(self.proxy.config.timeouts.connect, self._connect_timeout)

    def _connect_timeout(self) -> None:
        self.cancel_wait()
        self.error(504, f"timed out connecting to {self.req.authority}")

    def connect_failed(self, f: Failure) -> None:
        """Connecting upstream failed: refused or unreachable → 502, timed out → 504."""
        self._waiting = None
        if self.done or f.check(CancelledError):
            return  # whoever cancelled has answered
        if self.parent is not None:
            self._through_parent_failed(f)
            return
        authority = self.req.authority
        if f.check(ierror.TimeoutError, ierror.ConnectingCancelledError, ierror.UserError):
            self.error(504, f"timed out connecting to {authority}")
        elif f.check(ierror.ConnectionRefusedError):
            self.error(502, f"connection to {authority} refused")
        elif f.check(TLSFailed):
            reason = f.getErrorMessage()
            self.req.notes[TLS_ERROR] = reason
            log.warn(
                "fwproxy: TLS to {authority} failed ({client} {method} {target}): {reason}",
                authority=authority,
                client=self.conn.client[0],
                method=self.req.method,
                target=self.req.url,
                reason=reason,
            )
            self.error(502, f"TLS to {authority} failed: {reason}")
        else:
            self.error(502, f"cannot connect to {authority}: {f.getErrorMessage()}")

    def _through_parent_failed(self, f: Failure) -> None:
        parent = self.parent
        assert parent is not None
        if f.check(ParentRefused):
            # it answered: it is up, and it is its answer (another parent would say the same)
            self.parent_connected(True)
            refused: Any = f.value
            status = refused.status if refused.status in (502, 503, 504) else 502
            self.error(status, f"parent {parent} answered the CONNECT with {refused}")
        elif f.check(ierror.TimeoutError, ierror.ConnectingCancelledError, ierror.UserError):
            self.parent_failed("timed out", timed_out=True)
        elif f.check(ierror.ConnectionRefusedError):
            self.parent_failed("connection refused")
        elif f.check(TLSFailed):
            self.parent_failed(f"TLS failed: {f.getErrorMessage()}")
        elif f.check(ierror.ConnectionDone, ierror.ConnectionLost):
            self.parent_failed("closed the connection before answering the CONNECT")
        else:
            self.parent_failed(f.getErrorMessage())
