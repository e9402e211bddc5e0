"""The upstream side of relayed requests (fwproxy.relay, fwproxy.upstream), in memory.

Upstream connections are completed by hand from what the proxy asked MemoryReactorClock for;
response bytes are fed to them and what reaches the client is compared byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet import error as ierror

from fwproxy.record import TCP_MISS, TCP_MISS_ABORTED
from fwproxy.testing import (
    BASE_CONFIG,
    OK5,
    ORIGIN_IP,
    OTHER_IP,
    Client,
    FakeResolver,
    Harness,
    Upstream,
    field,
    get,
    split_response,
    status_of,
)


def relay(h: Harness, request: bytes = b"") -> tuple[Client, Upstream]:
    """A client whose request has reached a new upstream connection."""
    c = h.connect()
    c.send(request or get())
    up = h.accept()
    assert up.received(), "nothing was sent upstream"
    up.take()
    return c, up


# -- response framing ------------------------------------------------------------------------


def test_content_length_body_passes_through(h: Harness) -> None:
    c, up = relay(h)
    up.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhel")
    up.send(b"lo ")
    up.send(b"world")
    assert c.take() == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world"
    )
    assert not c.closed
    [rec] = h.records
    assert rec.content_type == "text/plain"
    assert rec.status == 200 and rec.result == TCP_MISS


def test_chunked_body_is_rechunked(h: Harness) -> None:
    c, up = relay(h)
    up.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n")
    up.send(b"5;ext=1\r\nhello\r\n")
    up.send(b"6\r\n world\r\n0\r\nX-T: 1\r\n\r\n")
    assert c.take() == (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    assert not c.closed
    assert h.factory.pool.idle_count() == 1


def test_close_delimited_body_becomes_chunked_for_http11_clients(h: Harness) -> None:
    c, up = relay(h)
    up.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc")
    up.send(b"defg")
    assert not c.closed
    up.lost()
    assert c.take() == (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
    )
    assert not c.closed  # the client connection outlives the origin's
    assert h.factory.pool.idle_count() == 0
    assert h.records[0].result == TCP_MISS


def test_close_delimited_body_stays_close_delimited_for_http10_clients(h: Harness) -> None:
    c, up = relay(h, get(headers=b"Connection: keep-alive\r\n", version=b"1.0"))
    up.send(b"HTTP/1.0 200 OK\r\n\r\nabc")
    assert not c.closed
    up.lost()
    _line, fields, body = split_response(c.received())
    assert field(fields, b"connection") == b"close"
    assert field(fields, b"transfer-encoding") is None
    assert body == b"abc"
    assert c.closed


def test_head_after_a_chunked_response_on_one_connection(h: Harness) -> None:
    c, up = relay(h)
    up.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert c.take() == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"

    c.send(get(method=b"HEAD"))
    assert len(h.attempts) == 1
    assert up.take() == b"HEAD / HTTP/1.1\r\nHost: example.com\r\n\r\n"
    # a HEAD response announces a body it does not have
    up.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-H: 1\r\n\r\n")
    line, fields, rest = split_response(c.take())
    assert line == b"HTTP/1.1 200 OK"
    assert rest == b""
    assert field(fields, b"x-h") == b"1"

    c.send(get(method=b"HEAD"))
    assert up.take().startswith(b"HEAD / ")
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
    assert c.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"

    c.send(get(b"http://example.com/after"))
    assert len(h.attempts) == 1
    assert up.take().startswith(b"GET /after ")
    up.send(OK5)
    assert c.take() == OK5
    assert not c.closed


def test_interim_responses_are_relayed_to_http11_clients(h: Harness) -> None:
    c, up = relay(h, get(method=b"POST", headers=b"Expect: 100-continue\r\nContent-Length: 2\r\n"))
    up.send(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert c.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
    c.send(b"hi")
    assert up.take() == b"hi"
    up.send(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n" + OK5)
    assert c.take() == b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n" + OK5
    assert [r.status for r in h.records] == [200]


def test_interim_responses_are_not_sent_to_http10_clients(h: Harness) -> None:
    c, up = relay(h, get(version=b"1.0"))
    up.send(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n" + OK5)
    line, _fields, body = split_response(c.received())
    assert line == b"HTTP/1.1 200 OK"
    assert body == b"hello"


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
        b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 100\r\n\r\n',
    ],
)
def test_bodiless_statuses(h: Harness, head: bytes) -> None:
    c, up = relay(h)
    up.send(head)
    assert c.take() == head  # no body, no chunked framing added
    assert not c.closed
    c.send(get(b"http://example.com/next"))
    assert up.take().startswith(b"GET /next ")  # the upstream connection was reusable
    up.send(OK5)
    assert c.take() == OK5


def test_hop_by_hop_response_fields_are_removed(h: Harness) -> None:
    c, up = relay(h)
    up.send(
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n"
        b"Keep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nSet-Cookie: a=1\r\n"
        b"Set-Cookie: b=2\r\nContent-Length: 5\r\n\r\nhello"
    )
    assert c.received() == (
        b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 5\r\n\r\nhello"
    )


def test_connection_naming_content_length_cannot_unframe_a_request_body(h: Harness) -> None:
    # were Content-Length dropped as a connection option, the body would reach the origin as
    # the next request, one the proxy never checked
    smuggled = b"GET /admin HTTP/1.1\r\nHost: example.com\r\n\r\n"
    head = get(
        method=b"POST",
        headers=b"Connection: Content-Length\r\nContent-Length: %d\r\n" % len(smuggled),
    )
    c = h.connect()
    c.send(head + smuggled)
    sent = h.accept().received()
    upstream_head, _, body = sent.partition(b"\r\n\r\n")
    assert b"\r\nContent-Length: %d" % len(smuggled) in upstream_head
    assert body == smuggled


def test_connection_naming_content_length_keeps_the_response_framed(h: Harness) -> None:
    c, up = relay(h)
    up.send(b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello")
    _line, fields, body = split_response(c.received())
    assert field(fields, b"content-length") == b"5" and body == b"hello"
    assert not c.closed


def test_client_asking_to_close_is_closed_after_the_response(h: Harness) -> None:
    c, up = relay(h, get(headers=b"Connection: close\r\n"))
    up.send(OK5)
    _line, fields, body = split_response(c.received())
    assert field(fields, b"connection") == b"close"
    assert body == b"hello"
    assert c.closed
    assert h.factory.pool.idle_count() == 1  # the upstream connection is still good


def test_upload_continues_after_an_early_response_head(h: Harness) -> None:
    """A full-duplex origin answers while the body is still arriving; the rest must flow."""
    c = h.connect()
    c.send(get(method=b"POST", headers=b"Content-Length: 10\r\n") + b"01234")
    up = h.accept()
    assert up.take().endswith(b"\r\n\r\n01234")
    up.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n01234\r\n")
    c.send(b"56789")
    assert up.take() == b"56789"
    assert not c.paused
    up.send(b"5\r\n56789\r\n0\r\n\r\n")
    assert c.received().endswith(b"5\r\n01234\r\n5\r\n56789\r\n0\r\n\r\n")
    assert not c.closed


def test_early_final_response_to_an_unfinished_upload(h: Harness) -> None:
    c = h.connect()
    c.send(get(method=b"POST", headers=b"Content-Length: 1000\r\n") + b"0123")
    up = h.accept()
    up.send(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
    assert status_of(c.received()) == 413
    assert c.closed  # the rest of the body can't be told from a next request
    assert up.closed
    assert h.factory.pool.idle_count() == 0


def test_reused_connection_is_not_expired_mid_request(h: Harness) -> None:
    c, up = relay(h)
    up.send(OK5)
    c.take()
    h.clock.advance(10)
    c.send(get())
    up.take()
    h.clock.advance(10)  # past the pool's idle timeout (15) counted from the first release
    assert not up.closed
    up.send(OK5)
    assert c.received() == OK5


def test_idle_upstream_expires_counted_from_its_last_release(h: Harness) -> None:
    c, up = relay(h)
    up.send(OK5)  # released at 0: would expire at 15
    c.take()
    h.clock.advance(10)
    c.send(get())
    up.take()
    h.clock.advance(2)
    up.send(OK5)  # released again at 12: expires at 27
    c.take()
    h.clock.advance(8)  # 20: past the first release's expiry
    assert not up.closed
    assert h.factory.pool.idle_count() == 1
    h.clock.advance(7.5)  # 27.5
    assert up.closed


def test_reusing_a_pooled_connection_schedules_no_timer_per_request(h: Harness) -> None:
    c, up = relay(h)
    up.send(OK5)
    c.take()
    scheduled = []
    call_later = h.clock.callLater

    def counting(*args: Any, **kwargs: Any) -> Any:
        scheduled.append(args[1])
        return call_later(*args, **kwargs)

    h.clock.callLater = counting  # type: ignore[method-assign]
    for _ in range(5):
        c.send(get())
        up.take()
        up.send(OK5)
        assert c.take() == OK5
    assert len(scheduled) < 5, scheduled  # not one (or more) per request


# -- upstream failures ----------------------------------------------------------------------


def test_upstream_closing_mid_body_closes_the_client(h: Harness) -> None:
    c, up = relay(h)
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
    up.lost()
    assert c.received() == b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234"
    assert c.closed
    [rec] = h.records
    assert rec.result == TCP_MISS_ABORTED


def test_upstream_closing_mid_chunked_body_does_not_end_the_body(h: Harness) -> None:
    c, up = relay(h)
    up.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    up.lost()
    data = c.received()
    assert data.endswith(b"5\r\nhello\r\n")
    assert b"0\r\n\r\n" not in data  # the client must not see a complete message
    assert c.closed
    assert h.records[0].result == TCP_MISS_ABORTED


def test_upstream_reset_mid_close_delimited_body_is_not_presented_complete(h: Harness) -> None:
    """RFC 9112 section 8: a close-delimited body ended by a connection error is incomplete."""
    c, up = relay(h)
    up.send(b"HTTP/1.1 200 OK\r\n\r\nabc")
    up.lost(ierror.ConnectionLost)  # a reset, not an orderly close
    data = c.received()
    assert not data.endswith(b"0\r\n\r\n")
    assert c.closed
    assert h.records[0].result == TCP_MISS_ABORTED


@pytest.mark.parametrize(
    "garbage",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
    ],
)
def test_upstream_garbage_gets_502(h: Harness, garbage: bytes) -> None:
    c, up = relay(h)
    up.send(garbage)
    assert status_of(c.received()) == 502
    assert up.closed
    assert h.factory.pool.idle_count() == 0


def test_upstream_closing_without_a_response_gets_502(h: Harness) -> None:
    c, up = relay(h)
    up.lost()
    assert status_of(c.received()) == 502
    assert len(h.attempts) == 1  # a fresh connection is not retried


def test_connection_refused_gets_502(h: Harness) -> None:
    c = h.connect()
    c.send(get())
    h.refuse()
    assert status_of(c.received()) == 502
    assert b"refused" in c.received()
    [rec] = h.records
    assert rec.status == 502


def test_connect_failure_other_than_refused_gets_502(h: Harness) -> None:
    c = h.connect()
    c.send(get())
    h.refuse(reason=ierror.NoRouteError())
    assert status_of(c.received()) == 502


def test_connect_timeout_gets_504(h: Harness) -> None:
    c = h.connect()
    c.send(get())
    h.clock.advance(9.9)
    assert c.received() == b""
    h.clock.advance(0.1)
    assert status_of(c.received()) == 504
    assert h.clock.connectors[0].stoppedConnecting


def test_reactor_connect_timeout_gets_504(h: Harness) -> None:
    c = h.connect()
    c.send(get())
    h.refuse(reason=ierror.TimeoutError())
    assert status_of(c.received()) == 504


def test_slow_dns_counts_against_the_connect_timeout(make: Callable[..., Harness]) -> None:
    resolver = FakeResolver()
    resolver.deferred.add("example.com")
    h = make(resolver=resolver)
    c = h.connect()
    c.send(get())
    [(_host, d)] = resolver.pending
    h.clock.advance(10)
    assert status_of(c.received()) == 504
    assert d.called  # the lookup was given up (cancelled)
    assert h.attempts == []


def test_deferred_dns_answer_connects(make: Callable[..., Harness]) -> None:
    resolver = FakeResolver()
    resolver.deferred.add("example.com")
    h = make(resolver=resolver)
    c = h.connect()
    c.send(get())
    assert h.attempts == []
    resolver.pending[0][1].callback([OTHER_IP])
    assert [a[:2] for a in h.attempts] == [(OTHER_IP, 80)]
    h.accept().send(OK5)
    assert c.received() == OK5


@pytest.mark.parametrize("deferred", [False, True])
def test_dns_without_addresses_gets_502(make: Callable[..., Harness], deferred: bool) -> None:
    resolver = FakeResolver()
    if deferred:
        resolver.deferred.add("gone.test")
    h = make(resolver=resolver)
    c = h.connect()
    c.send(get(b"http://gone.test/"))
    if deferred:
        resolver.pending[0][1].callback([])
    assert status_of(c.received()) == 502
    assert h.attempts == []


def test_first_byte_timeout_gets_504(h: Harness) -> None:
    c, up = relay(h)
    h.clock.advance(29.9)
    assert c.received() == b""
    h.clock.advance(0.1)
    assert status_of(c.received()) == 504
    assert up.transport.disconnected
    assert h.factory.pool.idle_count() == 0


def read_timeout_mid_body(h: Harness) -> tuple[Client, Upstream]:
    c, up = relay(h)
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    for _ in range(3):
        h.clock.advance(90)
        up.send(b"x")  # activity pushes the read deadline back
    assert not c.closed
    h.clock.advance(100)
    return c, up


def test_read_timeout_mid_body_cuts_the_response(h: Harness) -> None:
    c, up = read_timeout_mid_body(h)
    assert c.closed
    assert up.closed
    assert c.received().endswith(b"\r\n\r\nxxx")
    assert h.factory.pool.idle_count() == 0


def test_read_timeout_mid_body_is_recorded_as_aborted(h: Harness) -> None:
    read_timeout_mid_body(h)
    [rec] = h.records
    assert rec.status == 200
    assert rec.result == TCP_MISS_ABORTED


# -- the upstream connection pool -------------------------------------------------------------


def test_pooled_connection_is_reused_by_another_client(h: Harness) -> None:
    _c1, up = relay(h)
    up.send(OK5)
    assert h.factory.pool.idle_count() == 1
    c2 = h.connect(("127.0.0.1", 50001))
    c2.send(get(b"http://example.com/2"))
    assert len(h.attempts) == 1
    assert h.factory.pool.idle_count() == 0
    assert up.take() == b"GET /2 HTTP/1.1\r\nHost: example.com\r\n\r\n"
    up.send(OK5)
    assert c2.received() == OK5
    assert [r.upstream for r in h.records] == [f"{ORIGIN_IP}:80"] * 2


def test_pooled_connections_are_per_host_and_port(h: Harness) -> None:
    c, up = relay(h)
    up.send(OK5)
    c.send(get(b"http://example.com:8080/"))
    assert [a[:2] for a in h.attempts] == [(ORIGIN_IP, 80), (ORIGIN_IP, 8080)]


def test_idle_pooled_connection_times_out(h: Harness) -> None:
    c, up = relay(h)
    up.send(OK5)
    h.clock.advance(14.9)
    assert not up.closed
    h.clock.advance(0.1)
    assert up.closed
    up.lost()
    assert h.factory.pool.idle_count() == 0
    c.send(get())
    assert len(h.attempts) == 2


def test_idle_pool_is_bounded_per_host(h: Harness) -> None:
    clients = []
    ups = []
    for i in range(3):
        c = h.connect(("127.0.0.1", 50000 + i))
        c.send(get())
        clients.append(c)
        ups.append(h.accept())
    assert len(h.attempts) == 3
    for up in ups:
        up.send(OK5)
    assert h.factory.pool.idle_count() == 2  # max_idle_per_host
    assert [u.closed for u in ups] == [True, False, False]  # the oldest idle one goes


def test_max_idle_zero_disables_the_pool(make: Callable[..., Harness]) -> None:
    h = make(BASE_CONFIG.replace("max_idle_per_host = 2", "max_idle_per_host = 0"))
    _c, up = relay(h)
    up.send(OK5)
    assert up.closed
    assert h.factory.pool.idle_count() == 0


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    ],
)
def test_connection_the_origin_will_close_is_not_pooled(h: Harness, response: bytes) -> None:
    c, up = relay(h)
    up.send(response)
    assert c.received() == OK5
    assert h.factory.pool.idle_count() == 0
    assert up.closed


def test_response_followed_by_extra_bytes_is_not_pooled(h: Harness) -> None:
    c, up = relay(h)
    up.send(OK5 + b"HTTP/1.1 200 OK\r\n")
    assert c.received() == OK5
    assert h.factory.pool.idle_count() == 0
    assert up.closed


def test_idle_connection_closed_by_the_origin_leaves_the_pool(h: Harness) -> None:
    c, up = relay(h)
    up.send(OK5)
    up.lost()
    assert h.factory.pool.idle_count() == 0
    c.send(get())
    assert len(h.attempts) == 2


def test_idle_connection_that_speaks_is_dropped(h: Harness) -> None:
    c, up = relay(h)
    up.send(OK5)
    up.send(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    assert up.closed
    up.lost()
    assert h.factory.pool.idle_count() == 0
    assert c.received() == OK5


def test_stale_pooled_connection_is_retried_once_for_get(h: Harness) -> None:
    c, up = relay(h)
    up.send(OK5)
    c.take()
    c.send(get(b"http://example.com/2"))
    assert up.take().startswith(b"GET /2 ")
    up.lost()  # the origin had closed it meanwhile
    assert c.received() == b""
    assert len(h.attempts) == 2
    fresh = h.accept()
    assert fresh.received() == b"GET /2 HTTP/1.1\r\nHost: example.com\r\n\r\n"
    fresh.send(OK5)
    assert c.received() == OK5
    assert not c.closed


def test_stale_connection_retry_happens_only_once(h: Harness) -> None:
    c, up = relay(h)
    up.send(OK5)
    c.take()
    c.send(get())
    up.lost()
    assert len(h.attempts) == 2
    h.accept().lost()
    assert len(h.attempts) == 2
    assert status_of(c.received()) == 502


def test_stale_connection_is_not_retried_for_post(h: Harness) -> None:
    c, up = relay(h)
    up.send(OK5)
    c.take()
    c.send(get(method=b"POST", headers=b"Content-Length: 3\r\n") + b"abc")
    assert up.take().endswith(b"\r\n\r\nabc")
    up.lost()
    assert len(h.attempts) == 1
    assert status_of(c.received()) == 502


# -- flow control ---------------------------------------------------------------------------


def test_slow_client_pauses_the_upstream(h: Harness) -> None:
    c, up = relay(h)
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    assert c.transport.producer is up.transport and c.transport.streaming
    c.transport.full = True
    up.send(b"01234")
    assert up.paused
    c.transport.drain()
    assert not up.paused
    up.send(b"56789")
    assert c.transport.producer is None  # unregistered at the end of the response


def test_pooled_connection_is_not_left_paused_by_a_slow_client(h: Harness) -> None:
    c, up = relay(h)
    c.transport.full = True
    up.send(OK5)  # the last write fills the client's buffer: the upstream gets paused
    assert h.factory.pool.idle_count() == 1
    # the client's transport no longer has the upstream as producer: nobody would resume it
    assert not up.paused
    c2 = h.connect(("127.0.0.1", 50001))
    c2.send(get())
    assert len(h.attempts) == 1
    assert not up.paused


def test_slow_upstream_pauses_the_client_upload(h: Harness) -> None:
    c = h.connect()
    c.send(get(method=b"POST", headers=b"Content-Length: 12\r\n") + b"0123")
    up = h.accept()
    assert up.take() == (b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 12\r\n\r\n0123")
    assert up.transport.producer is c.proto.upstream_producer and up.transport.streaming
    up.transport.full = True
    c.send(b"4567")
    assert c.paused
    up.transport.drain()
    assert not c.paused
    c.send(b"89ab")
    assert up.take() == b"456789ab"
    assert up.transport.producer is None
    assert not c.paused
    up.send(OK5)
    assert c.received() == OK5


def test_body_sent_before_the_upstream_connects_waits_unread(h: Harness) -> None:
    c = h.connect()
    c.send(get(method=b"PUT", headers=b"Content-Length: 4\r\n") + b"da")
    assert c.paused  # the body can't go anywhere yet
    c.send(b"ta")
    up = h.accept()
    assert up.received().endswith(b"\r\n\r\ndata")
    assert not c.paused


def test_chunked_upload_is_rechunked(h: Harness) -> None:
    c = h.connect()
    c.send(get(method=b"POST", headers=b"Transfer-Encoding: chunked\r\n") + b"3;x=y\r\nabc\r\n")
    up = h.accept()
    c.send(b"2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n")
    assert up.received() == (
        b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )


# -- forwarding loops -------------------------------------------------------------------------


def test_request_to_the_proxy_itself_is_answered_not_connected(h: Harness) -> None:
    c = h.connect(local=("127.0.0.1", 3128))
    c.send(get(b"http://127.0.0.1:3128/"))
    status = status_of(c.received())
    assert 400 <= status < 600
    assert h.attempts == []


def test_name_resolving_to_the_proxy_is_a_loop(make: Callable[..., Harness]) -> None:
    h = make(resolver=FakeResolver({"me.test": ["10.0.0.5"]}))
    c = h.connect(local=("10.0.0.5", 3128))
    c.send(get(b"http://me.test:3128/x"))
    assert 400 <= status_of(c.received()) < 600
    assert h.attempts == []


def test_wildcard_listener_loop_through_loopback(make: Callable[..., Harness]) -> None:
    h = make(resolver=FakeResolver({"localhost": ["127.0.0.1"]}))
    h.factory.listening.append(("0.0.0.0", 3128))
    # connected on another address of this host; the target is the wildcard listener
    c = h.connect(local=("10.0.0.5", 3128))
    c.send(get(b"http://localhost:3128/"))
    assert 400 <= status_of(c.received()) < 600
    assert h.attempts == []


def test_same_address_other_port_is_not_a_loop(h: Harness) -> None:
    c = h.connect(local=("127.0.0.1", 3128))
    c.send(get(b"http://127.0.0.1:8000/"))
    assert [a[:2] for a in h.attempts] == [("127.0.0.1", 8000)]


def test_ipv6_literal_target(h: Harness) -> None:
    c = h.connect()
    c.send(get(b"http://[2001:db8::1]:8080/p"))
    assert [a[:2] for a in h.attempts] == [("2001:db8::1", 8080)]
    up = h.accept()
    assert up.received() == b"GET /p HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\n\r\n"
    up.send(OK5)
    assert c.received() == OK5
    assert h.records[0].upstream == "[2001:db8::1]:8080"
    assert h.factory.pool.idle_count() == 1
    c.send(get(b"http://[2001:db8::1]:8080/q"))
    assert len(h.attempts) == 1  # pooled by its bracketed address


def test_client_gone_while_connecting_gives_up_the_attempt(h: Harness) -> None:
    c = h.connect()
    c.send(get())
    c.lost()
    assert h.clock.connectors[0].stoppedConnecting
    assert h.records[0].result == TCP_MISS_ABORTED
    assert h.clock.getDelayedCalls() == []


# -- limits -----------------------------------------------------------------------------------

ONE_PER_HOST = BASE_CONFIG + "\n[limits]\nmax_upstream_per_host = 1\nmax_body_size = 8\n"


def test_requests_over_the_per_host_limit_wait_for_a_connection(
    make: Callable[..., Harness],
) -> None:
    h = make(ONE_PER_HOST)
    a, up = relay(h)
    b = h.connect(("127.0.0.1", 50001))
    b.send(get(b"http://example.com/b"))
    assert len(h.attempts) == 1  # b waits
    up.send(OK5)
    assert a.received() == OK5
    assert up.take() == b"GET /b HTTP/1.1\r\nHost: example.com\r\n\r\n"  # handed over
    up.send(OK5)
    assert b.received() == OK5
    assert h.factory.pool.idle_count() == 1


def test_waiting_request_connects_when_a_connection_closes(make: Callable[..., Harness]) -> None:
    h = make(ONE_PER_HOST)
    a, up = relay(h)
    b = h.connect(("127.0.0.1", 50001))
    b.send(get(b"http://example.com/b"))
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    up.lost()  # a's response is cut: the connection is gone, there is room for b
    assert a.closed
    assert len(h.attempts) == 2
    up2 = h.accept()
    assert up2.received().startswith(b"GET /b ")


def test_waiting_request_gives_up_at_the_connect_timeout(make: Callable[..., Harness]) -> None:
    h = make(ONE_PER_HOST)
    a, up = relay(h)
    b = h.connect(("127.0.0.1", 50001))
    b.send(get(b"http://example.com/b"))
    h.clock.advance(10)
    assert status_of(b.received()) == 504
    up.send(OK5)
    assert a.received() == OK5
    assert h.factory.pool.idle_count() == 1  # not handed to the request that gave up


def test_client_gone_while_waiting_for_a_connection(make: Callable[..., Harness]) -> None:
    h = make(ONE_PER_HOST)
    _a, up = relay(h)
    b = h.connect(("127.0.0.1", 50001))
    b.send(get(b"http://example.com/b"))
    b.lost()
    up.send(OK5)
    assert up.received() == b""
    assert h.factory.pool.idle_count() == 1


def test_request_body_over_the_limit_by_content_length(make: Callable[..., Harness]) -> None:
    h = make(ONE_PER_HOST)
    c = h.connect()
    c.send(get(method=b"POST", headers=b"Content-Length: 9\r\n") + b"123456789")
    assert status_of(c.received()) == 413
    assert c.closed
    assert h.attempts == []


def test_chunked_request_body_over_the_limit(make: Callable[..., Harness]) -> None:
    h = make(ONE_PER_HOST)
    c = h.connect()
    c.send(get(method=b"POST", headers=b"Transfer-Encoding: chunked\r\n") + b"5\r\n12345\r\n")
    up = h.accept()
    c.send(b"5\r\n67890\r\n0\r\n\r\n")
    assert status_of(c.received()) == 413
    assert c.closed
    assert up.transport.disconnected  # the origin never sees a complete request
    assert not up.received().endswith(b"0\r\n\r\n")


def test_connections_per_client_limit(make: Callable[..., Harness]) -> None:
    h = make(BASE_CONFIG + "\n[limits]\nmax_connections_per_client = 2\n")
    # counted once the client has sent its first bytes (its address is final then)
    first = [h.connect(("127.0.0.1", p)) for p in (1, 2)]
    for c in first:
        c.send(b"G")
    third = h.connect(("127.0.0.1", 3))
    third.send(b"GET /healthz HTTP/1.1\r\n\r\n")
    assert status_of(third.received()) == 503
    assert third.closed
    third.lost()
    other = h.connect(("127.0.0.2", 1))
    other.send(b"G")
    assert not other.closed
    first[0].lost()
    again = h.connect(("127.0.0.1", 4))
    again.send(b"GET /healthz HTTP/1.1\r\n\r\n")
    assert status_of(again.received()) == 200
    assert h.records == []
