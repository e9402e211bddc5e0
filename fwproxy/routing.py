# -*- test-case-name: tests.test_routing -*-
"""Which way a request goes once it is allowed: directly, or through parent proxies.

A :class:`Route` is the answer: :data:`DIRECT`, or parents tried in order (the next one when
connecting through one fails, skipping those marked down: Squid's ``FIRSTUP_PARENT``). It
comes from the :class:`fwproxy.interfaces.IUpstreamSelector` filters, in configuration order,
then from the built-in ``[routing]`` rules (:class:`RoutingRules`, written against the same
interface); when nobody answers, the request goes direct.

``[routing] rules`` are ``"parent NAME[,NAME...] ACL..."`` and ``"direct ACL..."``, checked in
order with squid's ACL semantics: the first rule whose ACLs all match decides (Squid's
``cache_peer_access`` and ``never_direct``: ``"parent corp all"`` last sends everything else
through ``corp``). A request whose parents all fail is answered ``502`` (``504`` when the last
one timed out): it never goes direct on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from fwproxy import chain
from fwproxy.acl import Acl, AclContext, AclError, NeedAddresses, client_ip
from fwproxy.filters.acl import request_context
from fwproxy.interfaces import IUpstreamSelector
from fwproxy.message import Request
from fwproxy.parents import Parent, ParentHealth
from fwproxy.rules import acl_terms, undefined


@dataclass(frozen=True)
class Route:
    """How a request reaches its destination: through ``parents``, tried in order, or (none)
    directly."""

    parents: tuple[Parent, ...] = ()

    @property
    def direct(self) -> bool:
        return not self.parents

    def __str__(self) -> str:
        return "direct" if self.direct else "parent " + ",".join(p.name for p in self.parents)


#: straight to the destination
DIRECT = Route()


@dataclass(frozen=True)
class RoutingRule:
    """``route`` when every term (``(acl, negated)``) matches."""

    route: Route
    terms: tuple[tuple[Acl, bool], ...]
    text: str

    @property
    def needs_addresses(self) -> bool:
        return any(acl.needs_addresses for acl, _ in self.terms)

    def matches(self, ctx: AclContext) -> bool:
        for acl, negated in self.terms:
            if acl.match(ctx) == negated:
                return False
        return True


def parse_routing_rule(
    text: str, acls: Mapping[str, Acl], parents: Mapping[str, Parent], where: str = "routing.rules"
) -> RoutingRule:
    """``"parent NAME[,NAME...] [!]ACL..."`` or ``"direct [!]ACL..."``.

    :raise AclError: naming ``where``, the rule and its problem.
    """
    words = text.split()
    if not words or words[0] not in ("parent", "direct"):
        raise AclError(f'{where}: {text!r} must start with "parent" or "direct"')
    if words[0] == "parent":
        if len(words) < 2:
            raise AclError(f'{where}: {text!r} names no parent (write "parent NAME ACL...")')
        names = [n for n in words[1].split(",") if n]
        missing = [n for n in names if n not in parents]
        if missing or not names:
            listed = ", ".join(f"[parents.{n}]" for n in missing) or f"a parent in {words[1]!r}"
            raise AclError(f"{where}: {text!r} needs {listed}, which is not defined")
        route = Route(tuple(parents[n] for n in names))
        named = words[2:]
    else:
        route, named = DIRECT, words[1:]
    if not named:
        raise AclError(f'{where}: {text!r} names no ACL (write "{" ".join(words)} all")')
    terms, missing = acl_terms(named, acls)
    if missing:
        raise undefined(where, text, missing)
    return RoutingRule(route, terms, " ".join(words))


@implementer(IUpstreamSelector)
class RoutingRules:
    """The ``[routing]`` rules as an :class:`IUpstreamSelector`: the first matching rule's route,
    or None (no rule matched). A rule with a ``dst`` ACL needs the destination's addresses:
    they are looked up when such a rule is reached (and kept in ``request.addresses``, where
    the proxy connects to for a direct route); a name that does not resolve matches no ``dst``.
    The route of a CONNECT is chosen before its client's ClientHello: ``ssl_sni`` ACLs match
    nothing here.

    :param rules: the parsed rules.
    :param clock: ``seconds()`` for ``time`` ACLs. :param resolver: an ``IResolver``.
    :param listening: the proxy's listening ``(host, port)`` pairs, for ``to_self``.
    """

    def __init__(
        self,
        rules: Sequence[RoutingRule],
        clock: Any,
        resolver: Any,
        listening: Sequence[tuple[str, int]] = (),
    ) -> None:
        self.rules = tuple(rules)
        self._clock = clock
        self._resolver = resolver
        self._listening = listening

    def selectUpstream(self, request: Request) -> Any:
        a = request.addresses
        addresses = None if a is None else tuple(ip for ip in map(client_ip, a) if ip)
        ctx = request_context(request, self._clock.seconds(), self._listening, addresses)
        try:
            for rule in self.rules:
                if rule.matches(ctx):
                    return rule.route
            return None
        except NeedAddresses:
            pass
        try:
            found = self._resolver.resolve(request.host)
        except Exception:  # noqa: BLE001 - a broken resolver is a failed lookup
            found = []
        if not isinstance(found, Deferred):
            return self._resolved(request, found)
        found.addErrback(lambda _: [])
        return found.addCallback(lambda addrs: self._resolved(request, addrs))

    def _resolved(self, request: Request, addresses: list[str]) -> Any:
        """The rules again, with the addresses (a Route, None or, never here, a Deferred)."""
        request.addresses = list(addresses)
        return self.selectUpstream(request)


class Routes:
    """What a transaction asks for its route, and the parents' health.

    :param selectors: the ``selectUpstream`` hooks of the ``IUpstreamSelector`` filters.
    :param rules: the built-in ``[routing]`` selector, asked after them.
    :param health: the parents' failures and mark-downs (kept across reloads).
    """

    def __init__(
        self, selectors: tuple[chain.Hook, ...], rules: RoutingRules, health: ParentHealth
    ) -> None:
        self.hooks = (*selectors, rules.selectUpstream) if rules.rules else selectors
        self.health = health
        #: whether anybody is to be asked (else every request goes direct, asking nobody)
        self.active = bool(self.hooks)

    def select(self, request: Request) -> Any:
        """Ask the selectors, then the ``[routing]`` rules: the first :class:`Route`,
        :data:`DIRECT` when none answers, or a Deferred firing with one of those.

        :raise chain.FilterError: a selector raised.
        :raise TypeError: a selector answered something else than a Route (or None).
        """
        result = chain.run(self.hooks, request)
        if isinstance(result, Deferred):
            return result.addCallback(_checked)
        return _checked(result)


def _checked(route: object) -> Route:
    if route is None:
        return DIRECT
    if not isinstance(route, Route):
        raise TypeError(f"selectUpstream returned {route!r}, not a fwproxy.routing.Route or None")
    return route


class Attempts:
    """One request's way through the parents of its route: the next one to try (skipping
    those marked down), and why each one tried failed.

    :param route: the parents, in order. :param health: their health, told of each failure.
    """

    def __init__(self, route: Route, health: ParentHealth) -> None:
        self._untried = list(route.parents)
        self._health = health
        #: one ``"NAME (host:port): why"`` per parent that failed or was skipped
        self.failures: list[str] = []
        #: the last failure was a timeout
        self.timed_out = False

    def next(self) -> Parent | None:
        """The next parent that is up, or None when none is left."""
        while self._untried:
            parent = self._untried.pop(0)
            if self._health.is_up(parent):
                return parent
            self.failures.append(f"{parent}: marked down")
        return None

    def failed(self, parent: Parent, reason: str, timed_out: bool = False) -> None:
        """Connecting through ``parent`` failed (it counts towards marking it down)."""
        self._health.failed(parent, reason)
        self.failures.append(f"{parent}: {reason}")
        self.timed_out = timed_out

    @property
    def status(self) -> int:
        """What to answer when no parent is left: 504 after a timeout, else 502."""
        return 504 if self.timed_out else 502

    def summary(self) -> str:
        return "; ".join(self.failures) or "no parent"
