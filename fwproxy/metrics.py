# -*- test-case-name: tests.test_metrics -*-
"""The proxy's metrics: counted as transactions finish, exposed through prometheus_client.

:class:`ProxyMetrics` is an :class:`fwproxy.interfaces.ITransactionObserver` that each
:class:`fwproxy.factory.ProxyFactory` owns (one per proxy, never prometheus_client's global
registry: two proxies in one process, or two tests, share nothing). Counting a transaction is a
few dictionary updates on plain Python numbers, well under a microsecond: prometheus_client's
own metric objects (a lock and a label look-up per update) are only used at scrape time, when
:class:`MetricsCollector` turns the numbers into metric families for a ``CollectorRegistry``.
The connections and tunnels open are read at scrape time too; the lookup and connect latencies
are timed by :class:`TimedResolver` and :class:`MeteredPool`, which the factory puts around its
resolver and upstream pool.

What is counted comes from the :class:`fwproxy.record.TransactionRecord` and the notes filters
left on it (the ``acl`` filter's ``DENIED_BY``, ``WOULD_DENY``, ``AUTH_FAILED``; the
``ratelimit`` filter's ``RATE_LIMITED``). With ``--workers``, :mod:`fwproxy.metrics_shared`
writes these numbers to prometheus_client's multiprocess files instead. See docs/metrics.md.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import CollectorRegistry
from twisted.internet.defer import Deferred
from zope.interface import implementer

from fwproxy.interfaces import IResolver, ITransactionObserver
from fwproxy.ratelimit import RATE_LIMITED
from fwproxy.record import TransactionRecord
from fwproxy.rules import AUTH_FAILED, DENIED_BY, WOULD_DENY
from fwproxy.upstream import UpstreamPool

#: methods counted by name; any other is counted as "OTHER" (a client chooses the method: a
#: label taken from it as sent would let one client grow the metrics without bound)
METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)

#: upper bounds (seconds) of the latency histograms' buckets
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Observations counted per bucket (not cumulative; the last bucket is +Inf) and summed."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus's ``le`` buckets: ``[("0.001", n), ..., ("+Inf", total)]``."""
        out, total = [], 0
        for bound, n in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, float(total)))
        return out


#: the counters: attribute of :class:`ProxyMetrics`, metric name, label, help
COUNTERS: tuple[tuple[str, str, str, str], ...] = (
    (
        "denials",
        "fwproxy_denials",
        "rule",
        "Requests denied (403), by the access rule that denied them.",
    ),
    (
        "would_deny",
        "fwproxy_would_deny",
        "rule",
        'Requests relayed in report-only mode ([access] mode = "report") that the rules '
        "would have denied, by rule.",
    ),
    (
        "rate_limited",
        "fwproxy_rate_limited",
        "limit",
        "Requests answered 429 by a [limits] client limit, by limit.",
    ),
    (
        "auth_failures",
        "fwproxy_auth_failures",
        "reason",
        "Proxy authentication failures: invalid (credentials refused), missing (none sent: "
        "407), throttled (too many failures: 429).",
    ),
    (
        "reloads",
        "fwproxy_reloads",
        "result",
        "Configuration reloads (SIGHUP), by result (success, failure).",
    ),
)

#: the totals without labels: attribute, metric name, help
TOTALS: tuple[tuple[str, str, str], ...] = (
    (
        "bytes_in",
        "fwproxy_received_bytes",
        "Bytes received from clients (request heads and bodies, tunnel bytes).",
    ),
    (
        "bytes_out",
        "fwproxy_sent_bytes",
        "Bytes sent to clients (response heads and bodies, tunnel bytes).",
    ),
    ("dns_failures", "fwproxy_dns_failures", "Host name lookups that found no address."),
    (
        "connect_failures",
        "fwproxy_upstream_connect_failures",
        "Connections to origins that failed or timed out.",
    ),
)

#: the histograms: attribute, metric name, help
HISTOGRAMS: tuple[tuple[str, str, str], ...] = (
    (
        "dns",
        "fwproxy_dns_lookup_seconds",
        "Time taken by host name lookups that were not answered from the cache.",
    ),
    (
        "connect",
        "fwproxy_upstream_connect_seconds",
        "Time taken to open a TCP connection to an origin (relayed requests; a pooled "
        "connection reused is not counted).",
    ),
)

#: the gauges, read at scrape time: index in what ``gauges()`` returns, metric name, help
GAUGES: tuple[tuple[int, str, str], ...] = (
    (0, "fwproxy_active_connections", "Client connections open."),
    (1, "fwproxy_active_tunnels", "CONNECT tunnels open."),
)

TRANSACTIONS = (
    "fwproxy_transactions",
    "Finished transactions, by squid-style result code (TCP_MISS, TCP_TUNNEL, TCP_DENIED, ...) "
    "and method.",
)


@implementer(ITransactionObserver)
class ProxyMetrics:
    """A proxy's numbers.

    :param gauges: returns ``(connections open, tunnels open)``, called at scrape time.
    :param header_refusals: returns the connections refused for sending a PROXY header they
        may not send, called at scrape time.
    """

    def __init__(
        self,
        gauges: Callable[[], tuple[int, int]] | None = None,
        header_refusals: Callable[[], int] | None = None,
    ) -> None:
        self.gauges = gauges if gauges is not None else lambda: (0, 0)
        #: connections closed because their peer may not send a PROXY header (read at scrape
        #: time from the admission's count: see fwproxy.proxyheader)
        self.header_refusals = header_refusals if header_refusals is not None else lambda: 0
        #: (result, method) -> transactions
        self.transactions: dict[tuple[str, str], int] = {}
        self.denials: dict[str, int] = {}
        self.would_deny: dict[str, int] = {}
        self.rate_limited: dict[str, int] = {}
        self.auth_failures: dict[str, int] = {}
        self.reloads: dict[str, int] = {"success": 0, "failure": 0}
        self.bytes_in = 0
        self.bytes_out = 0
        self.dns_failures = 0
        self.connect_failures = 0
        self.dns = Histogram()
        self.connect = Histogram()

    def transactionFinished(self, record: TransactionRecord) -> None:
        method = record.method
        key = (record.result, method if method in METHODS else "OTHER")
        counts = self.transactions
        counts[key] = counts.get(key, 0) + 1
        self.bytes_in += record.bytes_in
        self.bytes_out += record.bytes_out
        if record.notes:
            self._noted(record.notes)

    def _noted(self, notes: Mapping[str, object]) -> None:
        for key, counts in (
            (DENIED_BY, self.denials),
            (WOULD_DENY, self.would_deny),
            (RATE_LIMITED, self.rate_limited),
            (AUTH_FAILED, self.auth_failures),
        ):
            value = notes.get(key)
            if isinstance(value, str):
                counts[value] = counts.get(value, 0) + 1

    def reloaded(self, ok: bool) -> None:
        """A configuration reload succeeded (or was rejected)."""
        result = "success" if ok else "failure"
        self.reloads[result] += 1

    def families(self) -> Iterator[Metric]:
        """Everything, as prometheus_client metric families (for a collector)."""
        family = CounterMetricFamily(*TRANSACTIONS, labels=("result", "method"))
        for (result, method), n in sorted(self.transactions.items()):
            family.add_metric((result, method), n)
        yield family
        for attr, name, label, doc in COUNTERS:
            family = CounterMetricFamily(name, doc, labels=(label,))
            for value, n in sorted(getattr(self, attr).items()):
                family.add_metric((value,), n)
            yield family
        for attr, name, doc in TOTALS:
            yield CounterMetricFamily(name, doc, value=getattr(self, attr))
        yield CounterMetricFamily(
            "fwproxy_proxy_header_refused",
            "Connections to a haproxy: listener closed unread because their peer may not send a "
            "PROXY header (proxy.proxy_protocol_from).",
            value=self.header_refusals(),
        )
        for attr, name, doc in HISTOGRAMS:
            h: Histogram = getattr(self, attr)
            yield HistogramMetricFamily(name, doc, buckets=h.cumulative(), sum_value=h.sum)
        values = self.gauges()
        for index, name, doc in GAUGES:
            yield GaugeMetricFamily(name, doc, value=values[index])


class MetricsCollector:
    """A prometheus_client collector of one :class:`ProxyMetrics`."""

    def __init__(self, metrics: ProxyMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self.metrics.families()


def registry_of(metrics: ProxyMetrics) -> CollectorRegistry:
    """A new registry holding ``metrics`` (and nothing of the global default registry)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MetricsCollector(metrics))
    return registry


@implementer(IResolver)
class TimedResolver:
    """An :class:`fwproxy.interfaces.IResolver` timing the lookups of another: an answer
    given at once (an IP literal, a cached name) is not a lookup and is not timed."""

    def __init__(self, resolver: Any, clock: Any, metrics: ProxyMetrics) -> None:
        self.resolver = resolver
        self._clock = clock
        self._metrics = metrics

    def resolve(self, host: str) -> Any:
        result = self.resolver.resolve(host)
        if isinstance(result, Deferred):
            result.addBoth(self._done, self._clock.seconds())
        return result

    def _done(self, result: Any, started: float) -> Any:
        metrics = self._metrics
        metrics.dns.observe(max(0.0, self._clock.seconds() - started))
        if not isinstance(result, list) or not result:
            metrics.dns_failures += 1
        return result


class MeteredPool(UpstreamPool):
    """The upstream pool, timing each new connection it opens (and counting failures)."""

    def __init__(self, metrics: ProxyMetrics, reactor: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(reactor, *args, **kwargs)
        self._metrics = metrics
        self._clock = reactor

    def connect(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        started = self._clock.seconds()
        d = super().connect(*args, **kwargs)
        return d.addCallbacks(
            self._connected, self._failed, callbackArgs=(started,), errbackArgs=(started,)
        )

    def _connected(self, conn: Any, started: float) -> Any:
        self._metrics.connect.observe(max(0.0, self._clock.seconds() - started))
        return conn

    def _failed(self, failure: Any, started: float) -> Any:
        self._metrics.connect_failures += 1
        return failure
