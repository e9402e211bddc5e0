# -*- test-case-name: tests.test_acl -*-
"""The built-in ``acl`` filter: squid's ``http_access`` over requests and CONNECTs.

The policy (:class:`fwproxy.acl.AccessPolicy`) is evaluated first without the destination's
addresses. Only when a rule with a ``dst`` ACL is reached is the destination resolved (a client
denied by ``src`` never makes the proxy look a name up); the policy is then evaluated for each
resolved address, and ``request.addresses`` is narrowed to the allowed ones, so the proxy
connects only to an address that was checked (no second lookup, no DNS-rebinding gap).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from zope.interface import implementer, provider

from fwproxy.acl import AccessPolicy, AclContext, NeedAddresses, client_ip
from fwproxy.interfaces import IConnectFilter, IFilterContext, IFilterFactory, IRequestFilter
from fwproxy.message import Request, Response
from fwproxy.record import TCP_DENIED


def denied(request: Request) -> Response:
    return Response.text(403, f"fwproxy: access denied to {request.url}", TCP_DENIED)


@implementer(IRequestFilter, IConnectFilter)
class AclFilter:
    """Allows or denies each request by the first matching rule of an :class:`AccessPolicy`."""

    def __init__(self, policy: AccessPolicy, context: Any) -> None:
        self.policy = policy
        self._clock = context.reactor
        self._resolver = context.resolver
        self._listening = context.listening

    def _context(self, request: Request, addresses: tuple = None) -> AclContext:  # type: ignore[assignment]
        return AclContext(
            client=client_ip(request.client[0]),
            method=request.method,
            host=request.host,
            port=request.port,
            url=request.url,
            user=request.user,
            now=self._clock.seconds(),
            addresses=addresses,
            listening=self._listening,
        )

    def requestReceived(self, request: Request) -> Response | None | Deferred:
        try:
            return None if self.policy.allows(self._context(request)) else denied(request)
        except NeedAddresses:
            pass
        if request.addresses is not None:
            return self._per_address(request, request.addresses)
        d = maybeDeferred(self._resolver.resolve, request.host)
        d.addErrback(lambda _: [])
        d.addCallback(lambda addrs: self._per_address(request, addrs))
        return d

    connectReceived = requestReceived

    def _per_address(self, request: Request, addresses: list[str]) -> Response | None:
        ips = [ip for ip in (client_ip(a) for a in addresses) if ip is not None]
        if not ips:
            request.addresses = []
            ok = self.policy.allows(self._context(request, ()))
            return None if ok else denied(request)
        allowed = [
            str(ip) for ip in ips if self.policy.allows(self._context(request, (ip,)))
        ]
        if not allowed:
            return denied(request)
        request.addresses = allowed
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
