"""Connection limits and their 503 (fwproxy.admission), without sockets."""

from __future__ import annotations

from twisted.internet.task import Clock

from fwproxy.admission import Admission, fd_budget


def test_total_limit_refuses_with_503_and_counts() -> None:
    a = Admission(Clock(), max_connections=2)
    assert a.admit("c1", "10.0.0.1") is None
    assert a.admit("c2", "10.0.0.2") is None
    answer = a.admit("c3", "10.0.0.3")
    assert answer is not None and answer.startswith(b"HTTP/1.1 503 ")
    assert b"too many connections" in answer and b"Connection: close" in answer
    assert a.refused == 1
    a.forget("c1")
    assert a.admit("c4", "10.0.0.4") is None


def test_per_client_limit_and_recount_behind_a_balancer() -> None:
    a = Admission(Clock(), max_connections=100, max_per_client=1)
    assert a.admit("c1", "10.0.0.9") is None  # the balancer's address
    assert a.admit("c2", "10.0.0.9") is not None  # over the limit for that address
    a.forget("c2")
    # c1's PROXY header names the real client: the balancer's slot is given back
    assert a.recount("c1", "192.0.2.1") is None
    assert a.admit("c3", "10.0.0.9") is None
    assert a.recount("c3", "192.0.2.1") is not None  # that client already has one
    a.forget("c1")
    assert a.recount("c3", "192.0.2.1") is None


def test_idle_callback_when_the_last_connection_goes() -> None:
    calls: list[int] = []
    a = Admission(Clock(), 10, 0, idle=lambda: calls.append(1))
    a.admit("c1", "h")
    a.admit("c2", "h")
    a.forget("c1")
    assert calls == []
    a.forget("c2")
    assert calls == [1]


def test_refusals_are_logged_at_most_every_ten_seconds(capsys) -> None:  # type: ignore[no-untyped-def]
    from twisted.logger import globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        clock = Clock()
        a = Admission(clock, max_connections=1)
        a.admit("c1", "h")
        for _ in range(5):
            a.admit("x", "h")
        clock.advance(11)
        a.admit("y", "h")
    finally:
        globalLogPublisher.removeObserver(events.append)
    refusing = [e for e in events if "refusing connections" in e.get("log_format", "")]
    assert len(refusing) == 2 and refusing[-1]["n"] == 6


def test_zero_means_the_descriptor_budget() -> None:
    a = Admission(Clock())
    assert a.max_connections == fd_budget() >= 16
