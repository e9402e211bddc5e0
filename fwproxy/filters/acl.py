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
"""

from __future__ import annotations

from collections.abc import Mapping
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
from fwproxy.rules import AccessPolicy

_AUTH_TRIED = "fwproxy.auth_tried"


def denied(request: Request) -> Response:
    return Response.text(403, f"fwproxy: access denied to {request.url}", TCP_DENIED)


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

    def _context(self, request: Request, addresses: tuple = None) -> AclContext:  # type: ignore[assignment]
        sni = request.notes.get(SNI_NOTE)
        return AclContext(
            client=client_ip(request.client[0]),
            method=request.method,
            host=request.host,
            port=request.port,
            url=request.url,
            user=request.user,
            now=self._clock.seconds(),
            addresses=addresses,
            auth_pending=self._auth is not None and _AUTH_TRIED not in request.notes,
            listening=self._listening,
            client_cert=request.notes.get(CLIENT_CERT_NOTE),
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
                return self._verdict(request, self.policy.allows(self._context(request)))
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
            return Response.text(
                429,
                "fwproxy: too many failed authentication attempts; try again later",
                TCP_DENIED,
            )
        request.notes[_AUTH_TRIED] = True
        if user:
            request.user = user
        return self.requestReceived(request)

    def _verdict(self, request: Request, allowed: bool) -> Response | None:
        if allowed:
            request.checked = request.destination
            return None
        if self._auth is not None and request.notes.get(_AUTH_TRIED) and not request.user:
            response = Response.text(407, "fwproxy: proxy authentication required", TCP_DENIED)
            response.headers.add(b"Proxy-Authenticate", self._auth.challenge())
            return response
        return denied(request)

    def _per_address(self, request: Request, addresses: list[str]) -> Response | None:
        ips = [ip for ip in (client_ip(a) for a in addresses) if ip is not None]
        if not ips:
            request.addresses = []
            return self._verdict(request, self.policy.allows(self._context(request, ())))
        allowed = [str(ip) for ip in ips if self.policy.allows(self._context(request, (ip,)))]
        if not allowed:
            return self._verdict(request, False)
        request.addresses = allowed
        request.checked = request.destination
        return None


@provider(IFilterFactory)
class AclFilterFactory:
    """``acl``: built from the configuration's ``[acl.*]`` and ``[access]`` tables."""

    name = "acl"

    @staticmethod
    def build(options: Mapping[str, Any], context: IFilterContext) -> AclFilter:
        if options:
            raise ValueError("acl: takes no options; define [acl.NAME] tables and [access] rules")
        return AclFilter(context.config.access, context)
