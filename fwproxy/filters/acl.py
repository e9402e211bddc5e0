# -*- test-case-name: tests.test_acl -*-
"""The built-in ``acl`` filter: squid's ``http_access`` over requests and CONNECTs.

The policy (:class:`fwproxy.acl.AccessPolicy`) is evaluated first without the destination's
addresses. Only when a rule with a ``dst`` ACL is reached is the destination resolved (a client
denied by ``src`` never makes the proxy look a name up); the policy is then evaluated for each
resolved address, and ``request.addresses`` is narrowed to the allowed ones, so the proxy
connects only to an address that was checked (no second lookup, no DNS-rebinding gap).

A CONNECT to a peeked port (``[tunnel] peek_ports``) that reaches a rule with an ``ssl_sni`` ACL
is let through to its ClientHello (marked ``SNI_POSTPONED`` in its notes); :mod:`fwproxy.peek`
then runs the destination checks again with the server name known (``SNI_NOTE``).

In report-only mode (``[access] mode = "report"``) a request the rules deny is let through with
the rule noted in ``request.notes[WOULD_DENY]`` (the access log's ``would_deny``), unless a rule
guarding the destination denies it or it needs authentication (407): see
:meth:`fwproxy.rules.AccessPolicy.verdict`. A denial notes its rule in ``DENIED_BY``, an
authentication failure its reason in ``AUTH_FAILED`` (for the metrics).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer, provider

from fwproxy.acl import (
    CLIENT_CERT_NOTE,
    SNI_NOTE,
    SNI_POSTPONED,
    AclContext,
    NeedAddresses,
    NeedCredentials,
    NeedSni,
    client_ip,
)
from fwproxy.auth import RATE_LIMITED
from fwproxy.interfaces import (
    IConnectFilter,
    IDestinationCheck,
    IFilterContext,
    IFilterFactory,
    IRequestFilter,
)
from fwproxy.message import Request, Response
from fwproxy.record import TCP_DENIED
from fwproxy.rules import AUTH_FAILED, DENIED_BY, WOULD_DENY, AccessPolicy
from fwproxy.selfcheck import IPAddress

_AUTH_TRIED = "fwproxy.auth_tried"


def denied(request: Request) -> Response:
    return Response.text(403, f"fwproxy: access denied to {request.url}", TCP_DENIED)


def request_context(
    request: Request,
    now: float,
    listening: Sequence[tuple[str, int]],
    addresses: tuple[IPAddress, ...] | None = None,
    **more: Any,
) -> AclContext:
    """What the ACLs see of ``request`` (``more``: the other :class:`AclContext` fields, such
    as ``auth_pending`` or the tunnel's ``sni``). Shared with the ``[routing]`` rules, which
    match the same ACLs."""
    return AclContext(
        client=client_ip(request.client[0]),
        method=request.method,
        host=request.host,
        port=request.port,
        url=request.url,
        user=request.user,
        now=now,
        addresses=addresses,
        listening=listening,
        client_cert=request.notes.get(CLIENT_CERT_NOTE),
        path=request.path,
        local_port=request.local_port,
        **more,
    )


@implementer(IRequestFilter, IConnectFilter, IDestinationCheck)
class AclFilter:
    """Allows or denies each request by the first matching rule of an :class:`AccessPolicy`.

    Like the destination's addresses, the user is found only when a rule needs it: when a
    ``proxy_auth`` ACL is reached, the request's ``Proxy-Authorization`` is checked through the
    context's authenticator (:class:`fwproxy.auth.Authenticator`) and the rules are evaluated
    again with the user. Denied without a valid user: ``407`` with a ``Basic`` challenge.
    """

    def __init__(self, policy: AccessPolicy, context: Any) -> None:
        self.policy = policy
        self._clock = context.reactor
        self._resolver = context.resolver
        self._listening = context.listening
        self._auth = getattr(context, "authenticator", None)
        self._peek_ports = context.config.tunnel.peek_ports if policy.needs_sni else frozenset()
        self._report = policy.report_only

    def _context(self, request: Request, addresses: tuple = None) -> AclContext:  # type: ignore[assignment]
        sni = request.notes.get(SNI_NOTE)
        return request_context(
            request,
            self._clock.seconds(),
            self._listening,
            addresses,
            auth_pending=self._auth is not None and _AUTH_TRIED not in request.notes,
            sni=sni,
            sni_pending=sni is None
            and request.port in self._peek_ports
            and request.method == "CONNECT",
        )

    def requestReceived(self, request: Request) -> Response | None | Deferred:
        if (
            request.addresses is None
            and self.policy.needs_addresses
            and client_ip(request.host) is not None
        ):
            # an IP literal is its own address: evaluate once, per address, with no lookup
            request.addresses = [request.host]
        try:
            if request.addresses is None:
                return self._verdict(request, *self.policy.verdict(self._context(request)))
            return self._per_address(request, request.addresses)
        except NeedCredentials:
            return self._authenticate(request)
        except NeedSni:
            # decided when the ClientHello arrives (fwproxy.peek), on the address connected to
            request.notes[SNI_POSTPONED] = True
            request.checked = request.destination
            return None
        except NeedAddresses:
            pass
        try:
            addrs = self._resolver.resolve(request.host)
        except Exception:  # noqa: BLE001 - a broken resolver is a failed lookup
            addrs = []
        if not isinstance(addrs, Deferred):
            # a literal or a cached answer: stay synchronous, allocate no Deferred
            request.addresses = list(addrs)
            return self.requestReceived(request)
        addrs.addErrback(lambda _: [])
        addrs.addCallback(lambda a: self._resolved(request, a))
        return addrs

    connectReceived = checkDestination = requestReceived

    def _resolved(self, request: Request, addresses: list[str]) -> Any:
        request.addresses = list(addresses)
        return self.requestReceived(request)

    def _authenticate(self, request: Request) -> Any:
        result = self._auth.authenticate(request.credentials, request.client[0])  # type: ignore[union-attr]
        if isinstance(result, Deferred):
            return result.addCallback(lambda user: self._authenticated(request, user))
        return self._authenticated(request, result)

    def _authenticated(self, request: Request, user: Any) -> Any:
        if user is RATE_LIMITED:
            request.notes[AUTH_FAILED] = "throttled"
            return Response.text(
                429,
                "fwproxy: too many failed authentication attempts; try again later",
                TCP_DENIED,
            )
        request.notes[_AUTH_TRIED] = True
        if user:
            request.user = user
        return self.requestReceived(request)

    def _verdict(self, request: Request, allowed: bool, rule: str | None) -> Response | None:
        """Answer as :meth:`AccessPolicy.verdict` said: ``rule`` denies, or (allowed in
        report-only mode) would have denied."""
        unauthenticated = (
            self._auth is not None and not request.user and request.notes.get(_AUTH_TRIED)
        )
        if allowed and (rule is None or not unauthenticated):
            if rule is not None:
                request.notes[WOULD_DENY] = rule
            elif self._report:
                request.notes.pop(WOULD_DENY, None)  # allowed outright after a re-check
            request.checked = request.destination
            return None
        if unauthenticated:  # enforced in report-only mode too
            request.notes[AUTH_FAILED] = "invalid" if request.credentials else "missing"
            auth: Any = self._auth
            response = Response.text(407, "fwproxy: proxy authentication required", TCP_DENIED)
            response.headers.add(b"Proxy-Authenticate", auth.challenge())
            return response
        request.notes[DENIED_BY] = rule
        return denied(request)

    def _per_address(self, request: Request, addresses: list[str]) -> Response | None:
        ips = [ip for ip in (client_ip(a) for a in addresses) if ip is not None]
        if not ips:
            request.addresses = []
            return self._verdict(request, *self.policy.verdict(self._context(request, ())))
        verdict = self.policy.verdict
        allowed: list[str] = []
        reported: list[str] = []
        denial = would_deny = None
        for ip in ips:
            ok, rule = verdict(self._context(request, (ip,)))
            if not ok:
                denial = denial or rule
            elif rule is None:
                allowed.append(str(ip))
            else:
                would_deny = would_deny or rule
                reported.append(str(ip))
        if allowed:
            request.addresses = allowed
            return self._verdict(request, True, None)
        if reported:  # report-only mode: every address allowed would have been denied
            request.addresses = reported
            return self._verdict(request, True, would_deny)
        return self._verdict(request, False, denial)


@provider(IFilterFactory)
class AclFilterFactory:
    """``acl``: built from the configuration's ``[acl.*]`` and ``[access]`` tables."""

    name = "acl"

    @staticmethod
    def build(options: Mapping[str, Any], context: IFilterContext) -> AclFilter:
        if options:
            raise ValueError("acl: takes no options; define [acl.NAME] tables and [access] rules")
        return AclFilter(context.config.access, context)
