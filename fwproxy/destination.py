# -*- test-case-name: tests.test_destination -*-
"""From filtered request to connected upstream, shared by the relay and CONNECT.

After the request (or CONNECT) hooks have run, :class:`RoutedTransaction`:

1. has the destination checked again if a filter changed it after the access rules allowed it
   (``host``, ``port`` or ``addresses`` differ from :attr:`Request.checked`): a filter can route
   a request elsewhere, but never around the access rules and the SSRF guard, and never silently
   without effect;
2. resolves the host unless a filter (the ``acl`` filter, for a ``dst`` rule) already did, so
   the addresses checked are the addresses connected to;
3. refuses a forwarding loop (a destination that is this proxy);
4. connects (the subclass's :meth:`connect_upstream`), answering 502 for a refused or failed
   connection (or a TLS handshake that failed: the reason is in the answer, in
   ``notes["fwproxy.tls_error"]`` and in a warning logged) and 504 for one that timed out, with
   one ``timeouts.connect`` budget for name resolution and connecting.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from fwproxy import chain
from fwproxy.message import Request, Response
from fwproxy.origination import TLSFailed
from fwproxy.transaction import USAGE, Transaction

log = Logger()

#: where a failed TLS handshake's reason is kept in ``Request.notes`` (and the log record's)
TLS_ERROR = "fwproxy.tls_error"


class RoutedTransaction(Transaction):
    """A transaction that goes upstream: a relayed request or a CONNECT."""

    request: Request

    def destination_decided(self, answer: Response | None) -> None:
        """The request (or CONNECT) hooks have run: answer, or go on to the destination."""
        if answer is not None:
            self.answer(answer, close=self.close_after_answer())
            return
        self.routing()
        req = self.request
        checks = self.proxy.chain.destination
        if checks and req.checked != req.destination:
            self._recheck(checks)
        else:
            self.resolve_destination()

    def close_after_answer(self) -> bool:
        """Whether a filter's answer closes the connection (a CONNECT's does)."""
        return False

    def routing(self) -> None:
        """The request is allowed: it now waits on its destination (subclasses' state)."""

    def _recheck(self, checks: tuple[Any, ...]) -> None:
        req = self.request
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
        else:
            self.resolve_destination()

    def resolve_destination(self) -> None:
        """Resolve ``request.host`` unless a filter already did, then :meth:`_resolved`."""
        req = self.request
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
        req = self.request
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
        ``timeouts.connect`` budget."""
        deadline = self.deadline
        if deadline.expired != self._connect_timeout:
            deadline.restart(self.proxy.config.timeouts.connect, self._connect_timeout)

    def _connect_timeout(self) -> None:
        self.cancel_wait()
        self.error(504, f"timed out connecting to {self.request.authority}")

    def connect_failed(self, f: Failure) -> None:
        """Connecting upstream failed: refused or unreachable → 502, timed out → 504."""
        self._waiting = None
        if self.done or f.check(CancelledError):
            return  # whoever cancelled has answered
        authority = self.request.authority
        if f.check(ierror.TimeoutError, ierror.ConnectingCancelledError, ierror.UserError):
            self.error(504, f"timed out connecting to {authority}")
        elif f.check(ierror.ConnectionRefusedError):
            self.error(502, f"connection to {authority} refused")
        elif f.check(TLSFailed):
            reason = f.getErrorMessage()
            self.request.notes[TLS_ERROR] = reason
            log.warn(
                "fwproxy: TLS to {authority} failed ({client} {method} {target}): {reason}",
                authority=authority,
                client=self.conn.client[0],
                method=self.request.method,
                target=self.request.url,
                reason=reason,
            )
            self.error(502, f"TLS to {authority} failed: {reason}")
        else:
            self.error(502, f"cannot connect to {authority}: {f.getErrorMessage()}")
