"""Tests for :mod:`fwproxy.ratelimit` (token buckets and tunnel counts, sans-IO, on a
``twisted.internet.task.Clock``) and the ``ratelimit`` filter (:mod:`fwproxy.filters.ratelimit`)
in a proxy in memory."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from fwproxy.config import ConfigError, loads
from fwproxy.filters.ratelimit import RateLimitFactory, RateLimitFilter
from fwproxy.interfaces import (
    IConnectFilter,
    IFilterFactory,
    IRequestFilter,
    ITransactionObserver,
)
from fwproxy.ratelimit import RATE_LIMITED, TokenBuckets, TunnelCounts, retry_after
from fwproxy.testing import BASE_CONFIG, OK5, Harness, field, get, split_response, status_of

# -- TokenBuckets --------------------------------------------------------------------------------


def test_a_burst_then_the_rate():
    clock = Clock()
    buckets = TokenBuckets(clock, rate=2.0, burst=3)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # one token comes every half second
    clock.advance(0.25)
    assert buckets.take("a") == pytest.approx(0.25)
    clock.advance(0.25)
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == pytest.approx(0.5)


def test_a_refused_request_takes_nothing():
    clock = Clock()
    buckets = TokenBuckets(clock, rate=1.0, burst=1)
    assert buckets.take("a") == 0.0
    for _ in range(5):
        assert buckets.take("a") == pytest.approx(1.0 - clock.seconds() % 1.0)
        clock.advance(0.1)
    clock.advance(0.5)  # 1.0 s since the token was taken, however often it was asked
    assert buckets.take("a") == 0.0


def test_each_key_has_its_own_bucket():
    clock = Clock()
    buckets = TokenBuckets(clock, rate=1.0, burst=1)
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0
    assert buckets.take("b") == 0.0


def test_the_bucket_never_holds_more_than_the_burst():
    clock = Clock()
    buckets = TokenBuckets(clock, rate=10.0, burst=2)
    buckets.take("a")
    clock.advance(3600)
    assert [buckets.take("a") > 0 for _ in range(3)] == [False, False, True]


@pytest.mark.parametrize("rate, burst", [(5.0, 5), (0.5, 1), (2.5, 3), (100.0, 100)])
def test_the_default_burst_is_one_seconds_worth(rate, burst):
    assert TokenBuckets(Clock(), rate).burst == burst


def test_a_clock_stepping_back_adds_nothing():
    clock = Clock()
    clock.advance(1000)
    buckets = TokenBuckets(clock, rate=1.0, burst=1)
    assert buckets.take("a") == 0.0
    clock.rightNow -= 500  # the wall clock was set back
    assert buckets.take("a") == pytest.approx(1.0)
    clock.advance(1.0)
    assert buckets.take("a") == 0.0


def test_idle_buckets_are_dropped():
    clock = Clock()
    buckets = TokenBuckets(clock, rate=1.0, burst=2)  # a bucket fills up in 2 s
    for i in range(1000):
        buckets.take(i)
    assert len(buckets) == 1000
    clock.advance(1.9)
    buckets.take("new")
    assert len(buckets) == 1001  # none is full yet
    clock.advance(0.2)
    buckets.take("newer")
    assert len(buckets) == 2  # the 1000 filled up: forgotten, as if never seen


def test_memory_is_bounded_even_when_every_key_is_busy():
    clock = Clock()
    buckets = TokenBuckets(clock, rate=0.001, burst=1, max_keys=100)
    for i in range(10_000):
        buckets.take(i)
    assert len(buckets) <= 100
    # the least recently used went first: the latest keys are still limited
    assert buckets.take(9_999) > 0


def test_a_recently_used_bucket_is_kept_over_older_ones():
    clock = Clock()
    buckets = TokenBuckets(clock, rate=0.001, burst=1, max_keys=3)
    for key in ("a", "b", "c"):
        buckets.take(key)
    buckets.take("a")  # used again: now the most recent
    buckets.take("d")  # evicts the least recently used, "b"
    assert buckets.take("a") > 0 and buckets.take("c") > 0
    assert buckets.take("b") == 0.0


@pytest.mark.parametrize("rate", [0, -1.0])
def test_a_rate_must_be_positive(rate):
    with pytest.raises(ValueError):
        TokenBuckets(Clock(), rate)


@pytest.mark.parametrize("wait, header", [(0.01, 1), (1.0, 1), (1.2, 2), (59.5, 60)])
def test_retry_after_is_whole_seconds_rounded_up(wait, header):
    assert retry_after(wait) == header


# -- TunnelCounts -------------------------------------------------------------------------------


def test_tunnel_counts():
    counts = TunnelCounts(2)
    assert counts.open("a") and counts.open("a")
    assert not counts.open("a")
    assert counts.open("b")
    counts.close("a")
    assert counts.count("a") == 1 and counts.open("a")
    counts.close("a")
    counts.close("a")
    counts.close("b")
    assert len(counts) == 0  # keys with none open are not kept
    counts.close("zzz")  # unknown: nothing happens
    assert len(counts) == 0


# -- the filter ---------------------------------------------------------------------------------


def test_the_filter_provides_its_interfaces():
    f = RateLimitFilter(Clock(), 1.0, 1, 1)
    for iface in (IRequestFilter, IConnectFilter, ITransactionObserver):
        assert verifyObject(iface, f)
    assert verifyObject(IFilterFactory, RateLimitFactory)


def limited(extra: str = "") -> str:
    return BASE_CONFIG.replace("[timeouts]", f"[limits]\n{extra}\n[timeouts]")


def _get(h: Harness, peer: tuple[str, int] = ("127.0.0.1", 50000), headers: bytes = b""):
    c = h.connect(peer)
    c.send(get(b"http://example.com/", headers))
    return c


def went_upstream(h: Harness, c) -> bool:  # type: ignore[no-untyped-def]
    """The request was let through: not answered, and the proxy is connecting for it."""
    return c.received() == b"" and len(h.attempts) > 0 and not c.closed


def test_over_the_rate_is_429_with_retry_after():
    with Harness(limited("client_request_rate = 0.5\nclient_request_burst = 2")) as h:
        for n in (1, 2):
            assert went_upstream(h, _get(h)) and len(h.attempts) == n
        c = _get(h)
        status, fields, body = split_response(c.received())
        assert status == b"HTTP/1.1 429 Too Many Requests"
        assert field(fields, b"Retry-After") == b"2"  # one token every 2 s
        assert b"too many requests" in body
        assert len(h.attempts) == 2
        record = h.records[-1]
        assert (record.result, record.status) == ("TCP_DENIED", 429)
        assert record.notes[RATE_LIMITED] == "client_request_rate"
        h.clock.advance(2)
        c = _get(h)
        assert went_upstream(h, c) and len(h.attempts) == 3
        h.accept().send(OK5)
        assert status_of(c.received()) == 200


def test_clients_are_limited_apart():
    with Harness(limited("client_request_rate = 1")) as h:
        assert went_upstream(h, _get(h))
        assert status_of(_get(h).received()) == 429
        assert went_upstream(h, _get(h, ("127.0.0.2", 50000))) and len(h.attempts) == 2


def test_connects_count_against_the_rate_too():
    with Harness(limited("client_request_rate = 1")) as h:
        c = h.connect()
        c.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        c = h.connect()
        c.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        assert status_of(c.received()) == 429


def _connect(h: Harness, peer: tuple[str, int] = ("127.0.0.1", 50000), auth: bytes = b""):
    c = h.connect(peer)
    c.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n" + auth + b"\r\n")
    return c


def test_tunnels_per_client_are_limited_and_given_back():
    with Harness(limited("max_tunnels_per_client = 2")) as h:
        first, second = _connect(h), _connect(h)
        ups = [h.accept(0), h.accept(1)]
        assert all(status_of(c.received()) == 200 for c in (first, second))
        third = _connect(h)
        assert status_of(third.received()) == 429
        assert b"too many tunnels" in third.received()
        assert h.records[-1].notes[RATE_LIMITED] == "max_tunnels_per_client"
        other = _connect(h, ("127.0.0.2", 50000))
        h.accept()
        assert status_of(other.received()) == 200
        # a tunnel ends: its place is given back
        ups[0].lost()
        assert first.closed
        fourth = _connect(h)
        h.accept()
        assert status_of(fourth.received()) == 200


def test_a_tunnel_that_never_opened_gives_its_place_back():
    with Harness(limited("max_tunnels_per_client = 1")) as h:
        c = _connect(h)
        h.refuse()  # the origin refuses: 502, the CONNECT is over
        assert status_of(c.received()) == 502
        c = _connect(h)
        h.accept()
        assert status_of(c.received()) == 200


def test_a_tunnel_cut_by_its_client_gives_its_place_back():
    with Harness(limited("max_tunnels_per_client = 1")) as h:
        c = _connect(h)
        h.accept()
        c.lost()
        c = _connect(h)
        h.accept()
        assert status_of(c.received()) == 200


AUTH_CONFIG = """
[auth]
htpasswd = "{path}"
[acl.users]
proxy_auth = ["REQUIRED"]
[access]
rules = ["allow users", "deny all"]
[limits]
client_request_rate = 1
max_tunnels_per_client = 1
"""


def _basic(user: str, password: str) -> bytes:
    return b"Proxy-Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode())


def test_an_authenticated_user_is_limited_as_one_client_from_anywhere(tmp_path: Path):
    sha = base64.b64encode(hashlib.sha1(b"pw").digest()).decode()
    users = tmp_path / "users"
    users.write_text(f"alice:{{SHA}}{sha}\nbob:{{SHA}}{sha}\n")
    with Harness(AUTH_CONFIG.format(path=users)) as h:
        alice = _basic("alice", "pw") + b"\r\n"
        assert went_upstream(h, _get(h, ("127.0.0.1", 1), alice))
        # alice from another address: still alice's bucket
        assert status_of(_get(h, ("127.0.0.2", 2), alice).received()) == 429
        # bob from alice's first address: his own
        bob = _basic("bob", "pw") + b"\r\n"
        assert went_upstream(h, _get(h, ("127.0.0.1", 3), bob)) and len(h.attempts) == 2
        # a client without credentials is answered 407 before any limit (acl runs first)
        assert status_of(_get(h, ("127.0.0.3", 4)).received()) == 407


def test_limits_are_checked_in_the_configuration():
    with pytest.raises(ConfigError) as e:
        loads(
            "[limits]\nclient_request_rate = -1\nclient_request_burst = 1.5\n"
            'max_tunnels_per_client = "x"\n',
            "f.toml",
        )
    assert e.value.problems == [
        "f.toml:2: limits.client_request_rate: must be 0 (no limit) or greater, got -1",
        "f.toml:3: limits.client_request_burst: expected a whole number, got 1.5",
        "f.toml:4: limits.max_tunnels_per_client: expected a whole number, got 'x'",
    ]
    with pytest.raises(ConfigError) as e:
        loads("[limits]\nclient_request_burst = 10\n", "f.toml")
    assert e.value.problems == [
        "f.toml:2: limits.client_request_burst: has no effect without limits.client_request_rate"
    ]


def test_the_filter_runs_only_when_a_limit_is_set():
    def names(text: str) -> list[str]:
        return [f.name for f in loads(text).builtin_filters]

    assert names("") == ["acl", "headers", "accesslog"]
    assert names("[limits]\nclient_request_rate = 0\nmax_tunnels_per_client = 0\n") == [
        "acl",
        "headers",
        "accesslog",
    ]
    assert names("[limits]\nclient_request_rate = 2.5\n") == [
        "acl",
        "ratelimit",
        "headers",
        "accesslog",
    ]
    assert names("[limits]\nmax_tunnels_per_client = 4\n")[1] == "ratelimit"


def test_the_factory_takes_no_options():
    with pytest.raises(ValueError, match="takes no options"):
        RateLimitFactory.build({"rate": 1}, None)  # type: ignore[arg-type]
