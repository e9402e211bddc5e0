# -*- test-case-name: tests.test_resolver -*-
"""Name resolution for upstream connections, through the reactor's pluggable resolver.

IP literals are answered at once, without a Deferred. Names go to the reactor's
``nameResolver`` (getaddrinfo in a thread by default); answers are cached for ``ttl`` seconds,
so a busy proxy does not ask the system resolver once per request.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IResolutionReceiver
from zope.interface import implementer

from fwproxy.interfaces import IResolver
from fwproxy.selfcheck import parse_ip


def is_ip(host: str) -> bool:
    return parse_ip(host) is not None  # cached: this is asked for every request


@implementer(IResolutionReceiver)
class _Receiver:
    def __init__(self, d: Deferred[list[str]]) -> None:
        self._d = d
        self.addresses: list[str] = []

    def resolutionBegan(self, resolution: Any) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        if address.host not in self.addresses:
            self.addresses.append(address.host)

    def resolutionComplete(self) -> None:
        self._d.callback(self.addresses)


@implementer(IResolver)
class ReactorResolver:
    """Resolves with ``reactor.nameResolver``; caches answers (positive and negative)."""

    def __init__(self, reactor: Any, ttl: float = 30.0, negative_ttl: float = 5.0) -> None:
        self._reactor = reactor
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._cache: dict[str, tuple[float, list[str]]] = {}
        self._pending: dict[str, list[Deferred[list[str]]]] = {}

    def resolve(self, host: str) -> list[str] | Deferred[list[str]]:
        if is_ip(host):
            return [host]
        now = self._reactor.seconds()
        hit = self._cache.get(host)
        if hit is not None and hit[0] > now:
            return list(hit[1])
        waiter: Deferred[list[str]] = Deferred()
        if host in self._pending:
            self._pending[host].append(waiter)
            return waiter
        self._pending[host] = [waiter]
        d: Deferred[list[str]] = Deferred()
        receiver = _Receiver(d)
        try:
            self._reactor.nameResolver.resolveHostName(receiver, host, 0)
        except Exception:  # noqa: BLE001 - a broken resolver is a failed lookup
            d.callback([])
        d.addCallbacks(lambda a: self._done(host, a), lambda f: self._done(host, []))
        return waiter

    def _done(self, host: str, addresses: list[str]) -> None:
        ttl = self._ttl if addresses else self._negative_ttl
        self._cache[host] = (self._reactor.seconds() + ttl, addresses)
        if len(self._cache) > 10000:
            self._cache.clear()
        for w in self._pending.pop(host, []):
            w.callback(list(addresses))
