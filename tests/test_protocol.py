"""The client side of the proxy (fwproxy.protocol, fwproxy.transaction), in memory.

Each test drives a ProxyProtocol over a StringTransport, completes the upstream connections the
proxy asks MemoryReactorClock for by hand, and moves time with ``clock.advance``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from zope.interface import implementer
from zope.interface.verify import verifyObject

from fwproxy.interfaces import (
    IConnectionFilter,
    IRequestFilter,
    IResolver,
    IResponseFilter,
    ITransactionObserver,
)
from fwproxy.message import Request, Response
from fwproxy.record import NONE_NONE, TCP_DENIED, TCP_MISS, TCP_MISS_ABORTED
from fwproxy.testing import (
    BASE_CONFIG,
    OK5,
    ORIGIN_IP,
    RECORDERS,
    FakeResolver,
    Harness,
    Recorder,
    field,
    get,
    split_response,
    status_of,
)

# -- filters used by the tests ---------------------------------------------------------------


@implementer(IRequestFilter)
class RequestHook:
    def __init__(self, answer: Callable[[Request], Any] = lambda r: None) -> None:
        self.answer = answer
        self.seen: list[Request] = []

    def requestReceived(self, request: Request) -> Any:
        self.seen.append(request)
        return self.answer(request)


@implementer(IResponseFilter)
class ResponseHook:
    def __init__(self, answer: Callable[[Request, Response], Any]) -> None:
        self.answer = answer

    def responseReceived(self, request: Request, response: Response) -> Any:
        return self.answer(request, response)


@implementer(IConnectionFilter)
class ConnectionHook:
    def __init__(self, answer: Callable[[], Any]) -> None:
        self.answer = answer
        self.seen: list[tuple[tuple[str, int], tuple[str, int]]] = []

    def clientConnected(self, client: tuple[str, int], local: tuple[str, int]) -> Any:
        self.seen.append((client, local))
        return self.answer()


def boom(*args: object) -> Any:
    raise RuntimeError("filter bug")


# -- interfaces ------------------------------------------------------------------------------


def test_doubles_and_protocol_provide_their_interfaces(h: Harness) -> None:
    verifyObject(IResolver, FakeResolver())
    verifyObject(ITransactionObserver, Recorder())
    verifyObject(IRequestFilter, RequestHook())
    verifyObject(IResponseFilter, ResponseHook(lambda req, resp: None))
    verifyObject(IConnectionFilter, ConnectionHook(lambda: None))
    c = h.connect()
    verifyObject(IHalfCloseableProtocol, c.proto)
    verifyObject(IPushProducer, c.proto.upstream_producer)


# -- relaying a GET ------------------------------------------------------------------------------


def test_get_goes_upstream_in_origin_form_without_hop_by_hop_fields(h: Harness) -> None:
    c = h.connect()
    c.send(
        b"GET http://example.com/path?q=1 HTTP/1.1\r\n"
        b"Host: wrong.example\r\n"
        b"Connection: keep-alive, X-Foo\r\n"
        b"X-Foo: bar\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"Keep-Alive: 300\r\n"
        b"TE: trailers\r\n"
        b"Proxy-Authorization: Basic eDp5\r\n"
        b"User-Agent: t/1\r\n"
        b"Accept: */*\r\n"
        b"\r\n"
    )
    assert [a[:2] for a in h.attempts] == [(ORIGIN_IP, 80)]
    assert h.attempts[0][3] == h.config.timeouts.connect
    assert h.resolver.calls == ["example.com"]
    up = h.accept()
    assert up.received() == (
        b"GET /path?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t/1\r\nAccept: */*\r\n\r\n"
    )


def test_host_comes_from_the_uri_with_its_port(h: Harness) -> None:
    c = h.connect()
    c.send(get(b"http://Example.COM:8080", b"Host: example.com:8080\r\nHost: evil.test\r\n"))
    assert [a[:2] for a in h.attempts] == [(ORIGIN_IP, 8080)]
    up = h.accept()
    assert up.received() == b"GET / HTTP/1.1\r\nHost: example.com:8080\r\n\r\n"


def test_host_is_added_when_the_client_sent_none(h: Harness) -> None:
    c = h.connect()
    c.send(get(b"http://example.com/a", b"Accept: x\r\n", b"1.0"))
    up = h.accept()
    assert up.received() == b"GET /a HTTP/1.1\r\nHost: example.com\r\nAccept: x\r\n\r\n"


def test_x_forwarded_for_is_deleted_by_default(h: Harness) -> None:
    c = h.connect()
    c.send(get(headers=b"X-Forwarded-For: 1.2.3.4\r\nx-forwarded-for: 5.6.7.8\r\nA: b\r\n"))
    up = h.accept()
    assert b"forwarded" not in up.received().lower()
    assert up.received().endswith(b"A: b\r\n\r\n")


def test_response_is_relayed_and_the_connection_kept_alive(h: Harness) -> None:
    c = h.connect()
    c.send(get())
    up = h.accept()
    up.send(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n"
        b"Keep-Alive: timeout=5\r\nX-A: 1\r\n\r\nhello"
    )
    assert c.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello"
    assert not c.closed
    [rec] = h.records
    assert (rec.method, rec.target, rec.status, rec.result) == (
        "GET",
        "http://example.com/",
        200,
        TCP_MISS,
    )
    assert rec.upstream == f"{ORIGIN_IP}:80"
    assert rec.bytes_out == len(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello")

    up.take()
    c.send(get(b"http://example.com/2"))
    assert len(h.attempts) == 1  # the pooled upstream connection is reused
    assert up.take().startswith(b"GET /2 HTTP/1.1\r\n")
    up.send(OK5)
    assert c.take() == OK5
    assert not c.closed
    assert len(h.records) == 2


def test_pipelined_requests_are_answered_in_order(h: Harness) -> None:
    c = h.connect()
    c.send(get(b"http://example.com/1") + get(b"http://example.com/2"))
    up = h.accept()
    assert up.take() == b"GET /1 HTTP/1.1\r\nHost: example.com\r\n\r\n"
    # the second request is held (and the client not read) until the first response ends
    assert c.paused
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none")
    assert up.take() == b"GET /2 HTTP/1.1\r\nHost: example.com\r\n\r\n"
    assert len(h.attempts) == 1
    assert not c.paused
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo")
    assert c.take() == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo"
    )
    assert [r.target for r in h.records] == ["http://example.com/1", "http://example.com/2"]


def test_pipelined_request_to_another_host_waits_too(h: Harness) -> None:
    c = h.connect()
    c.send(get(b"http://example.com/1") + get(b"http://other.test/2"))
    up = h.accept()
    assert len(h.attempts) == 1
    up.send(OK5)
    assert [a[0] for a in h.attempts] == [ORIGIN_IP, "198.51.100.7"]
    up2 = h.accept()
    assert up2.received().startswith(b"GET /2 ")
    up2.send(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert c.received() == OK5 + b"HTTP/1.1 204 No Content\r\n\r\n"


def test_good_request_then_malformed_pipelined_one(h: Harness) -> None:
    """The first request gets its own response; only then the garbage gets 400 and a close."""
    c = h.connect()
    c.send(get(b"http://example.com/1") + b"BLAH\x01 nonsense\r\n\r\n")
    assert len(h.attempts) == 1
    assert c.received() == b""  # no answer before request 1 has its response
    up = h.accept()
    assert up.received().startswith(b"GET /1 HTTP/1.1\r\n")
    up.send(OK5)
    data = c.received()
    assert data.startswith(OK5)
    assert status_of(data[len(OK5) :]) == 400
    assert c.closed


def test_http10_client_gets_a_close_delimited_body(h: Harness) -> None:
    c = h.connect()
    c.send(get(version=b"1.0"))
    up = h.accept()
    assert up.received().startswith(b"GET / HTTP/1.1\r\n")
    up.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    up.send(b"6\r\n world\r\n0\r\n\r\n")
    line, fields, body = split_response(c.received())
    assert line == b"HTTP/1.1 200 OK"
    assert field(fields, b"connection") == b"close"
    assert field(fields, b"transfer-encoding") is None
    assert body == b"hello world"
    assert c.closed


def test_http10_client_without_keep_alive_is_closed_after_a_sized_response(h: Harness) -> None:
    c = h.connect()
    c.send(get(version=b"1.0"))
    h.accept().send(OK5)
    _line, fields, body = split_response(c.received())
    assert field(fields, b"connection") == b"close"
    assert body == b"hello"
    assert c.closed


def test_http10_keep_alive_client_is_kept(h: Harness) -> None:
    c = h.connect()
    c.send(get(headers=b"Connection: keep-alive\r\n", version=b"1.0"))
    up = h.accept()
    assert b"keep-alive" not in up.received().lower()
    up.send(OK5)
    _line, fields, body = split_response(c.received())
    assert field(fields, b"connection") == b"keep-alive"
    assert body == b"hello"
    assert not c.closed


def test_client_half_close_after_the_request_still_gets_the_response(h: Harness) -> None:
    c = h.connect()
    c.send(get())
    c.shutdown_write()
    assert not c.closed
    up = h.accept()
    up.send(OK5)
    assert c.received() == OK5
    assert c.closed


def test_client_gone_mid_response_aborts_the_upstream(h: Harness) -> None:
    c = h.connect()
    c.send(get())
    up = h.accept()
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    c.lost()
    assert up.transport.disconnected  # aborted: it can't be reused
    assert h.factory.pool.idle_count() == 0
    [rec] = h.records
    assert rec.result == TCP_MISS_ABORTED
    assert not h.factory.connections


# -- timeouts ----------------------------------------------------------------------------------


def test_request_header_timeout_answers_408_and_closes(h: Harness) -> None:
    c = h.connect()
    h.clock.advance(3)
    c.send(b"GET http://example.com/ HTTP/1.1\r\nHost: exa")  # the head starts at t=3
    h.clock.advance(2)
    c.send(b"mple.com\r\n")  # still arriving: does not push the deadline back
    h.clock.advance(2.9)
    assert c.received() == b""
    h.clock.advance(0.1)  # t=8: request_header (5) after the first byte
    assert status_of(c.received()) == 408
    assert c.closed
    assert h.attempts == []


def test_idle_keep_alive_connection_is_closed_silently(h: Harness) -> None:
    c = h.connect()
    c.send(get())
    h.accept().send(OK5)
    c.take()
    h.clock.advance(h.config.timeouts.client_idle - 0.1)
    assert not c.closed
    h.clock.advance(0.1)
    assert c.closed
    assert c.received() == b""
    assert len(h.records) == 1


def test_idle_timer_counts_from_the_end_of_the_last_response(h: Harness) -> None:
    c = h.connect()
    c.send(get())
    up = h.accept()
    h.clock.advance(25)  # longer than client_idle, while a transaction is in progress
    assert not c.closed
    up.send(OK5)
    h.clock.advance(19.9)
    assert not c.closed
    h.clock.advance(0.1)
    assert c.closed
    assert c.received() == OK5


def test_a_request_head_in_progress_after_idle_gets_the_header_timeout(h: Harness) -> None:
    c = h.connect()
    c.send(get())
    h.accept().send(OK5)
    h.clock.advance(19)  # nearly idle-timed out
    c.send(b"GET http://example.com/ HTTP/1.1\r\n")
    h.clock.advance(4.9)  # t=23.9: past the idle deadline, but a head is arriving
    assert not c.closed
    h.clock.advance(0.1)
    assert status_of(c.received()[len(OK5) :]) == 408
    assert c.closed


def test_pipelined_partial_head_gets_the_header_timeout(h: Harness) -> None:
    c = h.connect()
    c.send(get() + b"GET http://example.com/2 HTTP/1.1\r\nHo")  # a second head, started
    up = h.accept()
    h.clock.advance(1)
    up.send(OK5)
    assert c.take() == OK5
    h.clock.advance(h.config.timeouts.request_header)  # the head still has not ended
    assert c.closed
    assert status_of(c.received()) == 408


def test_a_silent_new_connection_is_closed_without_a_response(h: Harness) -> None:
    c = h.connect()
    h.clock.advance(h.config.timeouts.client_idle)
    assert c.closed
    assert c.received() == b""
    assert h.records == []


def test_bare_connect_and_close_logs_nothing(h: Harness) -> None:
    c = h.connect()
    assert c.proto in h.factory.connections
    c.lost()
    assert h.records == []
    assert h.failures == []
    assert h.clock.getDelayedCalls() == []
    assert not h.factory.connections


def test_bare_connect_and_half_close_logs_nothing(h: Harness) -> None:
    c = h.connect()
    c.shutdown_write()
    assert c.closed
    assert c.received() == b""
    c.lost()
    assert h.records == []
    assert h.clock.getDelayedCalls() == []


# -- the proxy's own pages and errors -----------------------------------------------------------


DENY_ALL = BASE_CONFIG.replace(
    'rules = ["deny connect !ssl_ports", "allow localhost", "deny all"]', 'rules = ["deny all"]'
)


def test_healthz_answers_200_without_acl(make: Callable[..., Harness]) -> None:
    h = make(DENY_ALL)
    c = h.connect(("10.1.1.1", 40000))
    c.send(b"GET /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n")
    line, fields, body = split_response(c.take())
    assert line == b"HTTP/1.1 200 OK"
    assert body == b"ok\n"
    assert field(fields, b"content-length") == b"3"
    assert not c.closed
    c.send(b"HEAD /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n")
    line, fields, body = split_response(c.take())
    assert line == b"HTTP/1.1 200 OK" and body == b""
    assert h.records == []  # health checks are not logged
    assert h.attempts == [] and h.resolver.calls == []


@pytest.mark.parametrize("target", [b"/", b"/other", b"/healthz/x", b"*"])
def test_other_origin_form_requests_get_400_and_close(h: Harness, target: bytes) -> None:
    c = h.connect()
    c.send(b"GET " + target + b" HTTP/1.1\r\nHost: proxy\r\n\r\n")
    assert status_of(c.received()) == 400
    assert b"forward proxy" in c.received()
    assert c.closed
    assert h.attempts == []


@pytest.mark.parametrize(
    "raw",
    [
        b"GET http://example.com/ HTTP/1.1\r\nBad Header\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
        b"GET http://example.com/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        (
            b"POST http://example.com/ HTTP/1.1\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ),
        b"GET http://example.com/ HTTP/1.1\r\nFoo: a\r\n  folded\r\n\r\n",
        b"GET http://exa mple.com/ HTTP/1.1\r\n\r\n",
    ],
)
def test_malformed_requests_get_400_and_close(h: Harness, raw: bytes) -> None:
    c = h.connect()
    c.send(raw)
    assert status_of(c.received()) == 400
    assert c.closed
    assert h.attempts == []


@pytest.mark.parametrize(
    "url", [b"ftp://example.com/", b"wsx://example.com/", b"ws:///x", b"http:///x"]
)
def test_unrelayable_absolute_targets_get_400(h: Harness, url: bytes) -> None:
    c = h.connect()
    c.send(get(url))
    assert status_of(c.received()) == 400
    assert c.closed
    assert h.attempts == []


@pytest.mark.parametrize("version", [b"2.0", b"1.2", b"9.9"])
def test_unsupported_http_version_gets_505(h: Harness, version: bytes) -> None:
    c = h.connect()
    c.send(get(version=version))
    assert status_of(c.received()) == 505
    assert c.closed
    assert h.attempts == []


LIMITS = BASE_CONFIG + "\n[limits]\nmax_header_size = 1024\nmax_headers = 10\nmax_target = 200\n"


def test_oversized_head_gets_431(make: Callable[..., Harness]) -> None:
    h = make(LIMITS)
    c = h.connect()
    c.send(get(headers=b"X-Big: " + b"a" * 2000 + b"\r\n"))
    assert status_of(c.received()) == 431
    assert c.closed
    assert h.attempts == []


def test_oversized_head_gets_431_before_it_ends(make: Callable[..., Harness]) -> None:
    h = make(LIMITS)
    c = h.connect()
    c.send(b"GET http://example.com/ HTTP/1.1\r\n")
    for _ in range(10):
        c.send(b"X-Big: " + b"a" * 200 + b"\r\n")  # never ends the head
    assert status_of(c.received()) == 431
    assert c.closed


def test_too_many_fields_get_431(make: Callable[..., Harness]) -> None:
    h = make(LIMITS)
    c = h.connect()
    c.send(get(headers=b"".join(b"X-%d: v\r\n" % i for i in range(11))))
    assert status_of(c.received()) == 431
    assert c.closed


def test_long_target_gets_414(make: Callable[..., Harness]) -> None:
    h = make(LIMITS)
    c = h.connect()
    c.send(get(b"http://example.com/" + b"a" * 300))
    assert status_of(c.received()) == 414
    assert c.closed


# -- access control and observers ---------------------------------------------------------------


def test_denied_client_gets_403_and_a_tcp_denied_record(h: Harness) -> None:
    c = h.connect(("10.1.1.1", 40000))
    c.send(get(b"http://example.com/x", b"User-Agent: ua\r\n"))
    assert status_of(c.received()) == 403
    assert h.attempts == []
    assert h.resolver.calls == []  # denied by source: no lookup
    [rec] = h.records
    assert (rec.client, rec.method, rec.target, rec.status, rec.result) == (
        "10.1.1.1",
        "GET",
        "http://example.com/x",
        403,
        TCP_DENIED,
    )
    assert rec.user_agent == "ua"
    assert rec.bytes_out == len(c.received())
    assert rec.upstream == ""


def test_observer_configured_by_dotted_path(make: Callable[..., Harness], tmp_path: Any) -> None:
    log = tmp_path / "access.log"
    toml = BASE_CONFIG + (
        f'\n[log]\naccess = "{log}"\n\n'
        '[[filters]]\nname = "fwproxy.testing.recorder_filter"\noptions = {key = "dotted"}\n'
    )
    h = make(toml, config_filters=True)
    c = h.connect(("10.1.1.1", 40000))
    c.send(get())
    assert status_of(c.received()) == 403
    [rec] = RECORDERS["dotted"].records
    assert rec.status == 403 and rec.result == TCP_DENIED
    h.clock.advance(0)  # the access log flushes at the end of the reactor turn
    assert "TCP_DENIED/403" in log.read_text()


def test_observer_that_raises_does_not_break_the_connection(make: Callable[..., Harness]) -> None:
    @implementer(ITransactionObserver)
    class Broken:
        def transactionFinished(self, record: object) -> None:
            raise ValueError("observer bug")

    h = make(filters=[Broken()])
    c = h.connect()
    c.send(get())
    h.accept().send(OK5)
    assert c.received() == OK5
    assert not c.closed
    assert len(h.records) == 1  # the recorder after the broken observer still ran
    [failure] = h.take_failures()
    assert failure.check(ValueError)


# -- request filters ------------------------------------------------------------------------------


def test_sync_filter_answer_is_sent_without_connecting(make: Callable[..., Harness]) -> None:
    hook = RequestHook(lambda r: Response.text(418, "teapot"))
    h = make(filters=[hook])
    c = h.connect()
    c.send(get())
    line, _fields, body = split_response(c.received())
    assert line.startswith(b"HTTP/1.1 418 ")
    assert body == b"teapot\n"
    assert h.attempts == [] and h.resolver.calls == []
    assert not c.closed
    assert [r.status for r in h.records] == [418]
    assert h.records[0].result == NONE_NONE


def test_sync_filter_edits_what_goes_upstream(make: Callable[..., Harness]) -> None:
    def edit(request: Request) -> None:
        request.headers.set("X-Tag", "1")
        request.path = b"/rewritten"
        request.notes["seen"] = True

    h = make(filters=[RequestHook(edit)])
    c = h.connect()
    c.send(get(b"http://example.com/orig"))
    up = h.accept()
    assert up.received() == b"GET /rewritten HTTP/1.1\r\nHost: example.com\r\nX-Tag: 1\r\n\r\n"
    up.send(OK5)
    assert h.records[0].notes == {"seen": True}


def test_deferred_filter_reads_nothing_from_the_client_meanwhile(
    make: Callable[..., Harness],
) -> None:
    pending: list[Deferred[Any]] = []
    hook = RequestHook(lambda r: pending.append(Deferred()) or pending[-1])
    h = make(filters=[hook])
    c = h.connect()
    c.send(get())
    assert len(pending) == 1
    assert h.attempts == [] and h.resolver.calls == []
    assert c.paused  # interfaces.py: "the proxy reads nothing more from that client"
    pending[0].callback(None)
    assert not c.paused
    assert [a[0] for a in h.attempts] == [ORIGIN_IP]


def test_deferred_filter_holds_the_body_and_the_next_request(
    make: Callable[..., Harness],
) -> None:
    pending: list[Deferred[Any]] = []
    hook = RequestHook(lambda r: pending.append(Deferred()) or pending[-1])
    h = make(filters=[hook])
    c = h.connect()
    c.send(b"POST http://example.com/ HTTP/1.1\r\nContent-Length: 4\r\n\r\nbo")
    c.send(b"dy" + get(b"http://example.com/next"))
    assert c.paused
    assert len(hook.seen) == 1  # the pipelined request is not looked at yet
    assert h.attempts == []
    pending[0].callback(None)
    up = h.accept()
    assert up.take() == (b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 4\r\n\r\nbody")
    up.send(OK5)
    assert len(hook.seen) == 2
    pending[1].callback(None)
    assert up.take().startswith(b"GET /next HTTP/1.1\r\n")


def test_deferred_filter_answer(make: Callable[..., Harness]) -> None:
    d: Deferred[Any] = Deferred()
    h = make(filters=[RequestHook(lambda r: d)])
    c = h.connect()
    c.send(get())
    assert c.received() == b""
    d.callback(Response.text(403, "no"))
    assert status_of(c.received()) == 403
    assert h.records[0].result == TCP_DENIED
    assert h.attempts == []


def test_already_fired_deferred_filter(make: Callable[..., Harness]) -> None:
    h = make(filters=[RequestHook(lambda r: succeed(None))])
    c = h.connect()
    c.send(get())
    h.accept().send(OK5)
    assert c.received() == OK5


def test_filters_run_in_order_and_the_first_answer_wins(make: Callable[..., Harness]) -> None:
    order: list[str] = []
    first = RequestHook(lambda r: order.append("first") or succeed(None))
    second = RequestHook(lambda r: order.append("second") or Response.text(451, "legal"))
    third = RequestHook(lambda r: order.append("third"))
    h = make(filters=[first, second, third])
    c = h.connect()
    c.send(get())
    assert status_of(c.received()) == 451
    assert order == ["first", "second"]


def test_filter_that_raises_gets_500_and_the_proxy_carries_on(
    make: Callable[..., Harness],
) -> None:
    h = make(filters=[RequestHook(boom)])
    c = h.connect()
    c.send(get())
    assert status_of(c.received()) == 500
    assert b"filter bug" not in c.received()  # no internals leak to the client
    assert c.closed
    assert [f.check(RuntimeError) for f in h.take_failures()] == [RuntimeError]
    assert [r.status for r in h.records] == [500]
    c2 = h.connect()
    c2.send(b"GET /healthz HTTP/1.1\r\n\r\n")
    assert status_of(c2.received()) == 200


def test_filter_deferred_that_fails_gets_500(make: Callable[..., Harness]) -> None:
    h = make(filters=[RequestHook(lambda r: fail(RuntimeError("later bug")))])
    c = h.connect()
    c.send(get())
    assert status_of(c.received()) == 500
    assert c.closed
    assert [f.check(RuntimeError) for f in h.take_failures()] == [RuntimeError]


def test_response_filter_that_raises_gets_500(make: Callable[..., Harness]) -> None:
    h = make(filters=[ResponseHook(boom)])
    c = h.connect()
    c.send(get())
    up = h.accept()
    up.send(OK5)
    assert status_of(c.received()) == 500
    assert c.closed
    assert up.closed
    assert h.factory.pool.idle_count() == 0
    assert len(h.take_failures()) == 1


def test_response_filter_edits_the_head(make: Callable[..., Harness]) -> None:
    def edit(request: Request, response: Response) -> None:
        response.headers.remove("Server")
        response.headers.add("X-Filtered", "yes")
        response.status = 203
        response.reason = "Filtered"

    h = make(filters=[ResponseHook(edit)])
    c = h.connect()
    c.send(get())
    h.accept().send(b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 2\r\n\r\nhi")
    assert c.received() == (
        b"HTTP/1.1 203 Filtered\r\nContent-Length: 2\r\nX-Filtered: yes\r\n\r\nhi"
    )


def test_deferred_response_filter_holds_the_body(make: Callable[..., Harness]) -> None:
    d: Deferred[Any] = Deferred()
    h = make(filters=[ResponseHook(lambda req, resp: d)])
    c = h.connect()
    c.send(get())
    up = h.accept()
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
    assert c.received() == b""
    assert up.paused
    d.callback(None)
    assert not up.paused
    up.send(b"56789")
    assert c.received() == b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"


def test_response_filter_replacing_the_response(make: Callable[..., Harness]) -> None:
    h = make(filters=[ResponseHook(lambda req, resp: Response.text(502, "replaced"))])
    c = h.connect()
    c.send(get())
    up = h.accept()
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
    line, _fields, body = split_response(c.received())
    assert line.startswith(b"HTTP/1.1 502") and body == b"replaced\n"
    assert up.closed  # the upstream body is not wanted
    assert not c.closed


# -- connection filters ---------------------------------------------------------------------
# They run when the client's first bytes arrive (its address is final then: PROXY protocol).

HEALTH = b"GET /healthz HTTP/1.1\r\n\r\n"


def test_connection_filter_returning_false_closes(make: Callable[..., Harness]) -> None:
    hook = ConnectionHook(lambda: False)
    h = make(filters=[hook])
    c = h.connect(("127.0.0.5", 1234))
    c.send(HEALTH)
    assert hook.seen == [(("127.0.0.5", 1234), ("127.0.0.1", 3128))]
    assert c.closed
    assert c.received() == b""
    c.lost()
    assert h.records == []
    assert h.clock.getDelayedCalls() == []


def test_connection_filter_returning_true_serves(make: Callable[..., Harness]) -> None:
    first = ConnectionHook(lambda: True)
    h = make(filters=[first, ConnectionHook(lambda: None)])
    c = h.connect()
    c.send(HEALTH)
    assert not c.closed and not c.paused
    assert status_of(c.received()) == 200
    c.send(HEALTH)
    assert len(first.seen) == 1  # once per connection, not per request


def test_later_connection_filter_still_runs_after_true(make: Callable[..., Harness]) -> None:
    second = ConnectionHook(lambda: False)
    h = make(filters=[ConnectionHook(lambda: True), second])
    c = h.connect()
    c.send(HEALTH)
    assert len(second.seen) == 1
    assert c.closed
    assert c.received() == b""


def test_deferred_connection_filter_holds_the_bytes_until_it_answers(
    make: Callable[..., Harness],
) -> None:
    answers: list[Deferred[Any]] = []
    h = make(filters=[ConnectionHook(lambda: answers.append(Deferred()) or answers[-1])])
    c1 = h.connect()
    c2 = h.connect()
    c1.send(b"GET /healthz HTTP/1.1\r\n")
    c2.send(HEALTH)
    assert c1.paused and c2.paused
    c1.send(b"\r\n")  # (already in flight when it was paused)
    assert c1.received() == b"" and c2.received() == b""
    answers[0].callback(True)
    assert not c1.paused and not c1.closed
    assert status_of(c1.received()) == 200
    answers[1].callback(False)
    assert c2.closed
    assert c2.received() == b""


def test_connection_filter_that_raises_closes_and_logs(make: Callable[..., Harness]) -> None:
    h = make(filters=[ConnectionHook(boom)])
    c = h.connect()
    c.send(HEALTH)
    assert c.closed
    assert c.received() == b""
    assert len(h.take_failures()) == 1


def test_request_then_half_close_while_the_connection_filter_decides(
    make: Callable[..., Harness],
) -> None:
    """printf 'GET ...' | nc: the request must still be answered once the filter allows it."""
    d: Deferred[Any] = Deferred()
    h = make(filters=[ConnectionHook(lambda: d)])
    c = h.connect()
    c.send(HEALTH)
    c.shutdown_write()
    d.callback(True)
    assert status_of(c.received()) == 200
    assert c.closed


def test_request_then_half_close_is_answered(h: Harness) -> None:
    c = h.connect()
    c.send(HEALTH)
    c.shutdown_write()
    assert status_of(c.received()) == 200
    assert c.closed
