# -*- test-case-name: tests.test_ratelimit -*-
"""The built-in ``ratelimit`` filter: ``[limits] client_request_rate`` and
``max_tunnels_per_client``.

Each request and CONNECT takes a token from its client's bucket (:class:`fwproxy.ratelimit.
TokenBuckets`); without one it is answered ``429`` with ``Retry-After``. A CONNECT also takes
one of its client's tunnel places (:class:`fwproxy.ratelimit.TunnelCounts`), given back when its
transaction is over (the filter observes transactions). The client is the authenticated user
when there is one (the ``acl`` filter, which runs first, found it), else the name of its verified
TLS client certificate, else its address. The proxy adds this filter after ``acl`` when a limit
is set; the counts start afresh on a reload.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from zope.interface import implementer, provider

from fwproxy.acl import CLIENT_CERT_NOTE
from fwproxy.interfaces import (
    IConnectFilter,
    IFilterContext,
    IFilterFactory,
    IRequestFilter,
    ITransactionObserver,
)
from fwproxy.message import Request, Response
from fwproxy.ratelimit import RATE_LIMITED, TokenBuckets, TunnelCounts, retry_after
from fwproxy.record import TCP_DENIED, TransactionRecord

#: ``Request.notes`` key: the tunnel place a CONNECT holds (a :class:`TunnelPlace`)
TUNNEL_PLACE = "fwproxy.tunnel_place"


def client_key(request: Request) -> Hashable:
    """Who a request counts against: its user, its client certificate, or its address."""
    if request.user:
        return ("user", request.user)
    cert = request.notes.get(CLIENT_CERT_NOTE)
    if cert is not None:
        return ("cert", cert.name)
    return ("address", request.client[0])


class TunnelPlace:
    """One counted tunnel; :meth:`release` gives the place back (once)."""

    __slots__ = ("_counts", "_key")

    def __init__(self, counts: TunnelCounts, key: Hashable) -> None:
        self._counts: TunnelCounts | None = counts
        self._key = key

    def release(self) -> None:
        counts, self._counts = self._counts, None
        if counts is not None:
            counts.close(self._key)


def too_many(request: Request, limit: str, message: str, wait: float | None = None) -> Response:
    """The ``429`` for a request over ``limit`` (noted for the metrics)."""
    request.notes[RATE_LIMITED] = limit
    response = Response.text(429, f"fwproxy: {message}", TCP_DENIED)
    if wait is not None:
        response.headers.add(b"Retry-After", b"%d" % retry_after(wait))
    return response


@implementer(IRequestFilter, IConnectFilter, ITransactionObserver)
class RateLimitFilter:
    """Answers ``429`` to requests over their client's rate, and CONNECTs over its tunnels.

    :param clock: gives the time (the reactor).
    :param rate: requests per second per client (0: no limit); ``burst``: the bucket's size.
    :param max_tunnels: tunnels open at once per client (0: no limit).
    """

    def __init__(self, clock: Any, rate: float, burst: int = 0, max_tunnels: int = 0) -> None:
        self.buckets = TokenBuckets(clock, rate, burst) if rate else None
        self.tunnels = TunnelCounts(max_tunnels) if max_tunnels else None

    def requestReceived(self, request: Request) -> Response | None:
        if self.buckets is None:
            return None
        wait = self.buckets.take(client_key(request))
        if wait:
            return too_many(request, "client_request_rate", "too many requests", wait)
        return None

    def connectReceived(self, request: Request) -> Response | None:
        answer = self.requestReceived(request)
        if answer is not None or self.tunnels is None:
            return answer
        key = client_key(request)
        if not self.tunnels.open(key):
            return too_many(request, "max_tunnels_per_client", "too many tunnels open")
        request.notes[TUNNEL_PLACE] = TunnelPlace(self.tunnels, key)
        return None

    def transactionFinished(self, record: TransactionRecord) -> None:
        place = record.notes.get(TUNNEL_PLACE)
        if isinstance(place, TunnelPlace):
            place.release()


@provider(IFilterFactory)
class RateLimitFactory:
    """``ratelimit``: configured by ``[limits]`` (``client_request_rate``,
    ``client_request_burst``, ``max_tunnels_per_client``); takes no options."""

    name = "ratelimit"

    @staticmethod
    def build(options: Mapping[str, Any], context: IFilterContext) -> RateLimitFilter:
        if options:
            raise ValueError("ratelimit: takes no options; set them in [limits]")
        limits = context.config.limits
        return RateLimitFilter(
            context.reactor,
            limits.client_request_rate,
            limits.client_request_burst,
            limits.max_tunnels_per_client,
        )
