"""Tests for :mod:`fwproxy.metrics` (counting, exposition through prometheus_client, the timed
resolver and pool) in a proxy in memory, and :mod:`fwproxy.metrics_shared` (``--workers``: the
multiprocess files, read back with prometheus_client's own ``MultiProcessCollector``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyObject

from fwproxy.config import loads
from fwproxy.interfaces import IResolver, ITransactionObserver
from fwproxy.metrics import LATENCY_BUCKETS, Histogram, ProxyMetrics, registry_of
from fwproxy.metrics_shared import (
    SharedCollector,
    SharedMetrics,
    forget_dead,
    prepare_directory,
    remove_directory,
)
from fwproxy.record import TransactionRecord
from fwproxy.rules import AUTH_FAILED, DENIED_BY, WOULD_DENY
from fwproxy.service import ProxyService
from fwproxy.testing import BASE_CONFIG, OK5, Harness, get, status_of


def samples(registry_or_text) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:  # type: ignore[no-untyped-def]
    """Every sample of a scrape: ``{(name, sorted labels): value}``."""
    text = (
        registry_or_text
        if isinstance(registry_or_text, str)
        else generate_latest(registry_or_text).decode()
    )
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(scrape, name: str, **labels: str) -> float:  # type: ignore[no-untyped-def]
    return scrape[(name, tuple(sorted(labels.items())))]


def record(**kw) -> TransactionRecord:  # type: ignore[no-untyped-def]
    values: dict = {
        "client": "10.0.0.1",
        "method": "GET",
        "target": "http://a/",
        "result": "TCP_MISS",
    }
    values.update(kw)
    return TransactionRecord(**values)


# -- counting -----------------------------------------------------------------------------------


def test_metrics_observe_transactions():
    assert verifyObject(ITransactionObserver, ProxyMetrics())


def test_transactions_by_result_and_method_and_bytes():
    m = ProxyMetrics()
    m.transactionFinished(record(bytes_in=100, bytes_out=1000))
    m.transactionFinished(record(bytes_in=50, bytes_out=5))
    m.transactionFinished(record(method="CONNECT", result="TCP_TUNNEL", bytes_in=7, bytes_out=9))
    m.transactionFinished(record(method="BREW", result="TCP_DENIED"))
    m.transactionFinished(record(method="get", result="TCP_DENIED"))
    scrape = samples(registry_of(m))
    assert value(scrape, "fwproxy_transactions_total", result="TCP_MISS", method="GET") == 2
    assert value(scrape, "fwproxy_transactions_total", result="TCP_TUNNEL", method="CONNECT") == 1
    # a method the client made up is not a label value of its own: the label set stays bounded
    assert value(scrape, "fwproxy_transactions_total", result="TCP_DENIED", method="OTHER") == 2
    assert value(scrape, "fwproxy_received_bytes_total") == 157
    assert value(scrape, "fwproxy_sent_bytes_total") == 1014


def test_notes_are_counted_by_rule_limit_and_reason():
    m = ProxyMetrics()
    m.transactionFinished(record(notes={DENIED_BY: "deny to_linklocal"}))
    m.transactionFinished(record(notes={DENIED_BY: "deny to_linklocal"}))
    m.transactionFinished(record(notes={DENIED_BY: "deny (no rule matched)"}))
    m.transactionFinished(record(notes={WOULD_DENY: "deny all"}))
    m.transactionFinished(record(notes={"fwproxy.rate_limited": "client_request_rate"}))
    m.transactionFinished(record(notes={AUTH_FAILED: "invalid"}))
    m.transactionFinished(record(notes={"acme.tag": "x"}))  # someone else's note
    m.reloaded(True)
    m.reloaded(False)
    m.reloaded(True)
    scrape = samples(registry_of(m))
    assert value(scrape, "fwproxy_denials_total", rule="deny to_linklocal") == 2
    assert value(scrape, "fwproxy_denials_total", rule="deny (no rule matched)") == 1
    assert value(scrape, "fwproxy_would_deny_total", rule="deny all") == 1
    assert value(scrape, "fwproxy_rate_limited_total", limit="client_request_rate") == 1
    assert value(scrape, "fwproxy_auth_failures_total", reason="invalid") == 1
    assert value(scrape, "fwproxy_reloads_total", result="success") == 2
    assert value(scrape, "fwproxy_reloads_total", result="failure") == 1


def test_histogram_buckets_are_cumulative():
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)
    assert h.cumulative() == [("0.1", 2.0), ("1.0", 3.0), ("+Inf", 4.0)]
    assert h.sum == pytest.approx(3.65)


def test_gauges_are_read_at_scrape_time():
    now = [3, 1]
    m = ProxyMetrics(lambda: (now[0], now[1]))
    registry = registry_of(m)
    assert value(samples(registry), "fwproxy_active_connections") == 3
    now[:] = [5, 2]
    scrape = samples(registry)
    assert value(scrape, "fwproxy_active_connections") == 5
    assert value(scrape, "fwproxy_active_tunnels") == 2


def test_every_metric_has_help_and_a_fwproxy_name():
    text = generate_latest(registry_of(ProxyMetrics())).decode()
    families = list(text_string_to_metric_families(text))
    assert {f.name for f in families} >= {
        "fwproxy_transactions", "fwproxy_denials", "fwproxy_would_deny", "fwproxy_rate_limited",
        "fwproxy_auth_failures", "fwproxy_reloads", "fwproxy_received_bytes",
        "fwproxy_sent_bytes", "fwproxy_active_connections", "fwproxy_active_tunnels",
        "fwproxy_dns_lookup_seconds", "fwproxy_upstream_connect_seconds",
        "fwproxy_dns_failures", "fwproxy_upstream_connect_failures",
    }  # fmt: skip
    assert all(f.name.startswith("fwproxy_") and f.documentation for f in families)


# -- in a proxy ---------------------------------------------------------------------------------


def test_each_proxy_has_its_own_registry_and_the_global_one_is_untouched():
    with Harness() as one, Harness() as two:
        c = one.connect()
        c.send(get(b"http://gone.test/"))  # does not resolve: 502
        assert status_of(c.received()) == 502
        first = samples(registry_of(one.factory.metrics))
        second = samples(registry_of(two.factory.metrics))
    assert value(first, "fwproxy_transactions_total", result="TCP_MISS", method="GET") == 1
    assert not any(name == "fwproxy_transactions_total" for name, _ in second)
    assert "fwproxy" not in generate_latest(REGISTRY).decode()


def test_a_relayed_request_a_denial_and_the_gauges():
    with Harness(config_filters=True, config=BASE_CONFIG + '\n[log]\naccess = "/dev/null"\n') as h:
        c = h.connect()
        c.send(get(b"http://example.com/"))
        up = h.accept()
        up.send(OK5)
        assert status_of(c.received()) == 200
        denied = h.connect(("10.1.1.1", 4000))
        denied.send(get(b"http://example.com/"))
        assert status_of(denied.received()) == 403
        tunnel = h.connect()
        tunnel.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        h.accept()
        assert status_of(tunnel.received()) == 200
        denied.lost()
        scrape = samples(registry_of(h.factory.metrics))
        assert value(scrape, "fwproxy_transactions_total", result="TCP_MISS", method="GET") == 1
        assert value(scrape, "fwproxy_transactions_total", result="TCP_DENIED", method="GET") == 1
        assert value(scrape, "fwproxy_denials_total", rule="deny all") == 1
        assert value(scrape, "fwproxy_sent_bytes_total") == len(c.received()) + len(
            denied.received()
        )
        # the first client keeps its connection alive, the tunnel's is open: 2 and 1
        assert value(scrape, "fwproxy_active_connections") == 2
        assert value(scrape, "fwproxy_active_tunnels") == 1


def test_lookup_latency_of_lookups_that_wait():
    with Harness() as h:
        c = h.connect()
        c.send(get(b"http://slow.test/"))
        ((name, d),) = h.resolver.pending
        h.clock.advance(0.3)
        d.callback(["192.0.2.80"])
        assert len(h.attempts) == 1
        c2 = h.connect()
        c2.send(get(b"http://[2001:db8::1]/"))  # a literal is no lookup
        c3 = h.connect()
        c3.send(get(b"http://other.test/"))  # answered at once (a cached name): no lookup
        assert len(h.attempts) == 3
        m = h.factory.metrics
        assert m.dns.counts[LATENCY_BUCKETS.index(0.5)] == 1
        assert sum(m.dns.counts) == 1 and m.dns.sum == pytest.approx(0.3)
        assert verifyObject(IResolver, h.factory.resolver)


def test_a_failed_lookup_is_counted():
    with Harness(resolver=None) as h:
        h.resolver.deferred.add("broken.test")
        c = h.connect()
        c.send(get(b"http://broken.test/"))
        ((_, d),) = h.resolver.pending
        d.callback([])
        assert status_of(c.received()) == 502
        assert h.factory.metrics.dns_failures == 1


def test_connect_latency_and_failures():
    with Harness() as h:
        c = h.connect()
        c.send(get(b"http://example.com/"))
        h.clock.advance(0.02)
        h.accept().send(OK5)
        assert status_of(c.received()) == 200
        c.send(get(b"http://example.com/"))  # the pooled connection: no new connect
        c2 = h.connect()
        c2.send(get(b"http://other.test/"))
        h.refuse()
        assert status_of(c2.received()) == 502
        m = h.factory.metrics
        assert sum(m.connect.counts) == 1
        assert m.connect.counts[LATENCY_BUCKETS.index(0.025)] == 1
        assert m.connect.sum == pytest.approx(0.02)
        assert m.connect_failures == 1


def test_reloads_are_counted(tmp_path: Path):
    results = iter([loads(""), ValueError("broken")])

    def reload():  # type: ignore[no-untyped-def]
        r = next(results)
        if isinstance(r, Exception):
            raise r
        return r

    service = ProxyService(loads("[admin]\nlisten = []\n"), MemoryReactorClock(), reload=reload)
    assert service.reload() is True
    assert service.reload() is False
    assert service.factory.metrics.reloads == {"success": 1, "failure": 1}


# -- --workers: the multiprocess files ----------------------------------------------------------


def _writer(directory: str, pid: int, connections: int = 0) -> tuple[ProxyMetrics, SharedMetrics]:
    m = ProxyMetrics(lambda: (connections, 0))
    return m, SharedMetrics(m, directory, Clock(), pid=pid)


def test_one_scrape_sums_every_process(tmp_path: Path):
    directory = str(tmp_path)
    me = os.getpid()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        m1, w1 = _writer(directory, me, connections=3)
        m2, w2 = _writer(directory, other.pid, connections=4)
        for m, n in ((m1, 2), (m2, 5)):
            for _ in range(n):
                m.transactionFinished(record(bytes_out=10, notes={DENIED_BY: "deny all"}))
        m1.dns.observe(0.002)
        m2.dns.observe(0.2)
        m2.dns.observe(30.0)
        w2.write()
        collector = SharedCollector(directory, own=w1)  # the admin process writes its own first
        scrape = samples(_text(collector))
        assert value(scrape, "fwproxy_transactions_total", result="TCP_MISS", method="GET") == 7
        assert value(scrape, "fwproxy_denials_total", rule="deny all") == 7
        assert value(scrape, "fwproxy_sent_bytes_total") == 70
        assert value(scrape, "fwproxy_active_connections") == 7
        assert value(scrape, "fwproxy_dns_lookup_seconds_bucket", le="0.0025") == 1
        assert value(scrape, "fwproxy_dns_lookup_seconds_bucket", le="0.25") == 2
        assert value(scrape, "fwproxy_dns_lookup_seconds_bucket", le="+Inf") == 3
        assert value(scrape, "fwproxy_dns_lookup_seconds_count") == 3
        assert value(scrape, "fwproxy_dns_lookup_seconds_sum") == pytest.approx(30.202)
        # the other process ends without a word: its connections are gone, its counts stay
        other.kill()
        other.wait()
        scrape = samples(_text(collector))
        assert value(scrape, "fwproxy_active_connections") == 3
        assert value(scrape, "fwproxy_transactions_total", result="TCP_MISS", method="GET") == 7
        # this process's later counts are current at the next scrape
        m1.transactionFinished(record())
        scrape = samples(_text(collector))
        assert value(scrape, "fwproxy_transactions_total", result="TCP_MISS", method="GET") == 8
        w1.stop()
        assert not (tmp_path / f"gauge_livesum_{me}.db").exists()
        assert (tmp_path / f"counter_{me}.db").exists()
    finally:
        other.kill()
        other.wait()


def _text(collector: SharedCollector) -> str:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry).decode()


def test_the_writer_writes_once_a_second(tmp_path: Path):
    clock = Clock()
    m = ProxyMetrics()
    w = SharedMetrics(m, str(tmp_path), clock, pid=4242)
    w.start()
    m.transactionFinished(record())
    reader = SharedCollector(str(tmp_path))  # another process's view: no own writer
    assert ("fwproxy_transactions_total", (("method", "GET"), ("result", "TCP_MISS"))) not in (
        samples(_text(reader))
    )
    clock.advance(1.0)
    scrape = samples(_text(reader))
    assert value(scrape, "fwproxy_transactions_total", result="TCP_MISS", method="GET") == 1
    w.stop()
    assert not clock.getDelayedCalls()


def test_forget_dead_keeps_the_living(tmp_path: Path):
    (tmp_path / f"gauge_livesum_{os.getpid()}.db").write_bytes(b"")
    (tmp_path / "gauge_livesum_999999999.db").write_bytes(b"")
    (tmp_path / "counter_999999999.db").write_bytes(b"")
    forget_dead(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "counter_999999999.db",
        f"gauge_livesum_{os.getpid()}.db",
    ]


def test_prepare_and_remove_the_directory(tmp_path: Path):
    (tmp_path / "counter_1.db").write_bytes(b"old")
    (tmp_path / "keep.txt").write_text("not ours")
    directory, made = prepare_directory(str(tmp_path))
    assert (directory, made) == (str(tmp_path), False)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]  # last run's numbers are gone
    new, made = prepare_directory(None)
    assert made and os.path.isdir(new)
    Path(new, "counter_2.db").write_bytes(b"")
    remove_directory(new)
    assert not os.path.exists(new)
