# -*- test-case-name: tests.test_ratelimit -*-
"""Per-client limits, sans-IO: a token bucket per client, and open tunnels per client.

:class:`TokenBuckets` allows ``rate`` requests per second per key, with bursts of up to
``burst``; :meth:`TokenBuckets.take` answers at once whether a request may go, or how long until
it could. Memory is bounded: a bucket that has filled up again is the same as no bucket, so idle
ones are dropped as new keys arrive (buckets are kept in the order they were last used, and only
the oldest are looked at), and at most ``max_keys`` are kept (beyond, the least recently used is
forgotten: that client starts again with a full bucket). :class:`TunnelCounts` counts the
tunnels open per key against a limit. The clock is passed in (anything with ``seconds()``: the
reactor, or a ``twisted.internet.task.Clock`` in tests). The ``ratelimit`` filter
(:mod:`fwproxy.filters.ratelimit`) applies both to requests.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Protocol

#: ``Request.notes`` key: which limit answered ``429`` ("client_request_rate" or
#: "max_tunnels_per_client"), for the metrics
RATE_LIMITED = "fwproxy.rate_limited"


class Clock(Protocol):
    def seconds(self) -> float: ...


class TokenBuckets:
    """One token bucket per key: ``rate`` tokens a second, holding at most ``burst``.

    :param clock: gives the time (``seconds()``).
    :param rate: tokens added per second (requests per second allowed in the long run), > 0.
    :param burst: the bucket's size, the requests allowed at once after a quiet spell (0: one
        second's worth, ``ceil(rate)``, at least 1).
    :param max_keys: buckets kept at most.
    """

    def __init__(self, clock: Clock, rate: float, burst: int = 0, max_keys: int = 100_000) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be greater than 0, got {rate!r}")
        self._clock = clock
        self.rate = float(rate)
        self.burst = float(burst) if burst > 0 else float(max(1, math.ceil(rate)))
        #: seconds an empty bucket takes to fill up: a bucket idle this long is full
        self.refill = self.burst / self.rate
        self.max_keys = max_keys
        #: key -> (tokens, when); least recently used first
        self._buckets: dict[Hashable, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Hashable) -> float:
        """Take a token from ``key``'s bucket: ``0.0`` if there was one (the request may go),
        else the seconds until there will be one (the bucket is left as it was)."""
        now = self._clock.seconds()
        buckets = self._buckets
        found = buckets.pop(key, None)
        if found is None:
            self._forget_idle(now)
            tokens = self.burst
        else:
            # max(): a wall clock may step backwards; that adds nothing, and takes nothing
            tokens = min(self.burst, found[0] + max(0.0, now - found[1]) * self.rate)
        if tokens >= 1.0:
            buckets[key] = (tokens - 1.0, now)
            return 0.0
        buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _forget_idle(self, now: float) -> None:
        """Drop the buckets that have filled up (the oldest first, stopping at the first
        that has not), then the least recently used while there are ``max_keys`` or more."""
        buckets = self._buckets
        cutoff = now - self.refill
        while buckets:
            key = next(iter(buckets))
            if buckets[key][1] > cutoff:
                break
            del buckets[key]
        while len(buckets) >= self.max_keys:
            del buckets[next(iter(buckets))]


class TunnelCounts:
    """Tunnels open per key, at most ``limit`` each; keys with none are not kept."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")
        self.limit = limit
        self._open: dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self._open)

    def count(self, key: Hashable) -> int:
        return self._open.get(key, 0)

    def open(self, key: Hashable) -> bool:
        """Count one more tunnel for ``key``; False (not counted) if it has ``limit`` open."""
        n = self._open.get(key, 0)
        if n >= self.limit:
            return False
        self._open[key] = n + 1
        return True

    def close(self, key: Hashable) -> None:
        """One of ``key``'s tunnels has ended."""
        n = self._open.get(key, 0) - 1
        if n > 0:
            self._open[key] = n
        else:
            self._open.pop(key, None)


def retry_after(wait: float) -> int:
    """The ``Retry-After`` value for a wait of ``wait`` seconds: whole seconds, at least 1."""
    return max(1, math.ceil(wait))
