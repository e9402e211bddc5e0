"""Body filters inside the relay (fwproxy.bodyrelay), in memory: re-framing, Deferreds pausing
the producing side, replacing a response before any byte of it was sent, errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from zope.interface import implementer

from fwproxy.bodyrelay import FilteredResponseRelay
from fwproxy.filters.redact import RedactFilter, RedactSpec
from fwproxy.interfaces import IBodyTransform, IRequestBodyFilter, IResponseBodyFilter
from fwproxy.message import Request, Response
from fwproxy.response import ResponseRelay
from fwproxy.testing import Client, Harness, Upstream, field, get, split_response, status_of

Make = Callable[..., Harness]


def redact(**options: Any) -> RedactFilter:
    return RedactFilter(RedactSpec.from_options({"patterns": ["secret"], **options}))


@implementer(IBodyTransform)
class Scripted:
    """Answers with whatever the test's ``answer`` function says, and records its calls."""

    def __init__(self, answer: Callable[[bytes | None], Any], keeps_length: bool) -> None:
        self.answer = answer
        self.keeps_length = keeps_length
        self.calls: list[bytes | None] = []

    def data(self, chunk: bytes) -> Any:
        self.calls.append(chunk)
        return self.answer(chunk)

    def end(self) -> Any:
        self.calls.append(None)
        return self.answer(None)


@implementer(IRequestBodyFilter, IResponseBodyFilter)
class Both:
    """Hands out :class:`Scripted` transforms for request and/or response bodies."""

    def __init__(
        self,
        answer: Callable[[bytes | None], Any] = lambda c: c or b"",
        keeps_length: bool = False,
        requests: bool = False,
        responses: bool = True,
    ) -> None:
        self.answer, self.keeps_length = answer, keeps_length
        self.requests, self.responses = requests, responses
        self.made: list[Scripted] = []
        self.seen: list[Response] = []

    def _make(self) -> Scripted:
        t = Scripted(self.answer, self.keeps_length)
        self.made.append(t)
        return t

    def requestBody(self, request: Request) -> Scripted | None:
        return self._make() if self.requests else None

    def responseBody(self, request: Request, response: Response) -> Scripted | None:
        self.seen.append(response)
        return self._make() if self.responses else None


def relay(h: Harness, request: bytes = b"") -> tuple[Client, Upstream]:
    c = h.connect()
    c.send(request or get())
    up = h.accept()
    up.take()
    return c, up


# -- cheap when unused ------------------------------------------------------------------------


def test_no_body_filter_means_the_plain_response_relay(h: Harness) -> None:
    c, up = relay(h)
    txn = c.proto.current
    assert type(txn.response) is ResponseRelay
    assert txn.body_filter is None


def test_a_response_body_filter_means_the_filtered_relay(make: Make) -> None:
    h = make(filters=[Both()])
    c, _ = relay(h)
    assert type(c.proto.current.response) is FilteredResponseRelay


# -- response framing -------------------------------------------------------------------------


def test_length_changing_filter_rechunks_for_http11(make: Make) -> None:
    h = make(filters=[redact()])
    c, up = relay(h)
    up.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 17\r\n\r\nmy sec")
    up.send(b"ret is 42")
    up.send(b"!!")
    out = c.take()
    status, fields, body = split_response(out)
    assert status == b"HTTP/1.1 200 OK"
    assert field(fields, b"content-length") is None
    assert field(fields, b"transfer-encoding") == b"chunked"
    assert body.endswith(b"0\r\n\r\n")
    assert dechunk(body) == b"my [REDACTED] is 42!!"
    assert not c.closed
    assert h.factory.pool.idle_count() == 1
    [rec] = h.records
    assert rec.status == 200 and rec.bytes_out == len(out)


def test_length_changing_filter_closes_for_http10(make: Make) -> None:
    h = make(filters=[redact()])
    c, up = relay(h, get(version=b"1.0", headers=b"Connection: keep-alive\r\n"))
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\na secret, b.")
    out = c.take()
    status, fields, body = split_response(out)
    assert field(fields, b"content-length") is None
    assert field(fields, b"transfer-encoding") is None
    assert field(fields, b"connection") == b"close"
    assert body == b"a [REDACTED], b."
    assert c.closed


def test_chunked_origin_body_stays_chunked(make: Make) -> None:
    h = make(filters=[redact()])
    c, up = relay(h)
    up.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nsecr\r\n")
    up.send(b"2\r\net\r\n0\r\n\r\n")
    _, fields, body = split_response(c.take())
    assert field(fields, b"transfer-encoding") == b"chunked"
    assert dechunk(body) == b"[REDACTED]"


def test_length_keeping_filter_keeps_content_length(make: Make) -> None:
    h = make(filters=[redact(mask="#")])
    c, up = relay(h)
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nsecret, ok")
    assert c.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n######, ok"
    assert not c.closed


@pytest.mark.parametrize(
    ("request_", "response"),
    [
        (get(method=b"HEAD"), b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n"),
        (get(), b"HTTP/1.1 204 No Content\r\n\r\n"),
        (get(), b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n"),
    ],
)
def test_bodiless_responses_are_not_filtered(make: Make, request_: bytes, response: bytes) -> None:
    f = Both()
    h = make(filters=[f])
    c, up = relay(h, request_)
    up.send(b"HTTP/1.1 100 Continue\r\n\r\n" + response)
    assert f.made == []
    assert c.take().endswith(response)
    assert not c.closed


# -- flow control ------------------------------------------------------------------------------


def test_pending_response_filter_pauses_the_upstream(make: Make) -> None:
    pending: list[Deferred[Any]] = []

    def later(chunk: bytes | None) -> Any:
        d: Deferred[Any] = Deferred()
        pending.append(d)
        return d

    h = make(filters=[Both(later)])
    c, up = relay(h)
    up.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\n3\r\ntwo\r\n")
    assert len(pending) == 1  # the second chunk of the same read waits its turn
    assert up.paused
    assert c.received() == b""  # the head waits for the first filtered piece
    # the client's buffer draining must not resume an upstream a filter holds
    c.transport.drain()
    assert up.paused
    pending[0].callback(b"ONE")
    assert len(pending) == 2 and up.paused
    pending[1].callback(b"TWO")
    assert not up.paused
    up.send(b"0\r\n\r\n")
    pending[2].callback(b"")
    _, _, body = split_response(c.take())
    assert dechunk(body) == b"ONETWO"
    assert not c.closed and h.records[-1].status == 200


def test_slow_client_still_pauses_a_filtered_upstream(make: Make) -> None:
    h = make(filters=[redact(max_match=2)])
    c, up = relay(h)
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    c.transport.full = True
    up.send(b"01234")
    assert up.paused
    c.transport.drain()
    assert not up.paused


def test_pending_request_filter_stops_reading_the_client(make: Make) -> None:
    pending: list[Deferred[Any]] = []

    def later(chunk: bytes | None) -> Any:
        d: Deferred[Any] = Deferred()
        pending.append(d)
        return d

    h = make(filters=[Both(later, requests=True, responses=False)])
    c = h.connect()
    c.send(get(method=b"POST", headers=b"Content-Length: 6\r\n") + b"abc")
    up = h.accept()
    head = up.take()
    assert b"Transfer-Encoding: chunked" in head and b"Content-Length" not in head
    assert len(pending) == 1
    c.send(b"def")
    assert c.paused and len(pending) == 1  # not taken while the filter decides
    pending[0].callback(b"ABC")
    assert len(pending) == 2
    pending[1].callback([b"D", b"EF"])
    pending[2].callback(b"!")
    assert up.take() == b"3\r\nABC\r\n1\r\nD\r\n2\r\nEF\r\n1\r\n!\r\n0\r\n\r\n"
    assert not c.paused
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert c.received().endswith(b"ok")
    assert h.factory.pool.idle_count() == 1


def test_request_body_redacted_with_content_length_kept(make: Make) -> None:
    h = make(filters=[redact(mask="x", requests=True, responses=False)])
    c = h.connect()
    c.send(get(method=b"PUT", headers=b"Content-Length: 9\r\n") + b"a secret!")
    up = h.accept()
    assert up.take().endswith(b"Content-Length: 9\r\n\r\na xxxxxx!")


def test_chunked_request_body_redacted(make: Make) -> None:
    h = make(filters=[redact(requests=True)])
    c = h.connect()
    c.send(get(method=b"POST", headers=b"Transfer-Encoding: chunked\r\n") + b"3\r\nsec\r\n")
    up = h.accept()
    c.send(b"3\r\nret\r\n0\r\n\r\n")
    assert up.received().endswith(b"Transfer-Encoding: chunked\r\n\r\na\r\n[REDACTED]\r\n0\r\n\r\n")


# -- replacing ---------------------------------------------------------------------------------


def test_response_replaced_before_any_byte_was_sent(make: Make) -> None:
    def dlp(chunk: bytes | None) -> Any:
        if chunk is not None and b"card" in chunk:
            return Response.text(403, "blocked by DLP")
        return []  # hold everything back until decided

    h = make(filters=[Both(dlp)])
    c, up = relay(h)
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nharmless ")
    assert c.received() == b""
    up.send(b"card 4111")
    out = c.take()
    assert status_of(out) == 403 and out.endswith(b"blocked by DLP\n")
    assert up.closed  # the rest of the upstream body is not wanted
    assert h.records[-1].status == 403


def test_request_filter_refusal_answers_the_client(make: Make) -> None:
    def dlp(chunk: bytes | None) -> Any:
        return Response.text(403, "upload refused") if chunk and b"secret" in chunk else chunk

    h = make(filters=[Both(dlp, keeps_length=True, requests=True, responses=False)])
    c = h.connect()
    c.send(get(method=b"POST", headers=b"Content-Length: 12\r\n") + b"fine ")
    up = h.accept()
    c.send(b"secret!")
    assert status_of(c.received()) == 403
    assert up.closed and c.closed


def test_replacing_after_bytes_were_sent_cuts_the_connection(make: Make) -> None:
    def late(chunk: bytes | None) -> Any:
        return Response.text(403, "too late") if chunk == b"two" else chunk or b""

    h = make(filters=[Both(late)])
    c, up = relay(h)
    up.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\n")
    assert c.received().endswith(b"3\r\none\r\n")
    up.send(b"3\r\ntwo\r\n")
    assert c.closed and b"too late" not in c.received()
    [f] = h.take_failures()
    assert "after the response had started" in f.getErrorMessage()


def test_raising_transform_answers_500(make: Make) -> None:
    def boom(chunk: bytes | None) -> Any:
        raise RuntimeError("boom")

    h = make(filters=[Both(boom)])
    c, up = relay(h)
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    assert status_of(c.received()) == 500
    [f] = h.take_failures()
    assert "boom" in f.getTraceback()


def test_upstream_failure_before_the_first_piece_is_a_502(make: Make) -> None:
    h = make(filters=[Both(lambda c: [])])
    c, up = relay(h)
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\nheld back")
    up.lost()
    assert status_of(c.received()) == 502


def test_client_gone_while_a_filter_decides(make: Make) -> None:
    pending: list[Deferred[Any]] = []

    def later(chunk: bytes | None) -> Any:
        d: Deferred[Any] = Deferred()
        pending.append(d)
        return d

    h = make(filters=[Both(later)])
    c, up = relay(h)
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    c.lost()
    assert up.closed
    assert pending[0].called  # cancelled
    assert h.records[-1].status == 0


def dechunk(body: bytes) -> bytes:
    out = []
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(body[:size])
        body = body[size + 2 :]


@pytest.mark.parametrize("side", ["request", "response"])
def test_a_raising_body_hook_answers_500(make: Make, side: str) -> None:
    @implementer(IRequestBodyFilter, IResponseBodyFilter)
    class Broken:
        def requestBody(self, request: Request) -> None:
            if side == "request":
                raise RuntimeError("no transform")

        def responseBody(self, request: Request, response: Response) -> None:
            raise RuntimeError("no transform")

    h = make(filters=[Broken()])
    c = h.connect()
    c.send(get(method=b"POST", headers=b"Content-Length: 2\r\n") + b"hi")
    up = h.accept()
    if side == "response":
        assert up.take().endswith(b"\r\n\r\nhi")
        up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert status_of(c.received()) == 500 and c.closed
    assert up.closed
    [f] = h.take_failures()
    assert f.check(RuntimeError) and "no transform" in f.getTraceback()


@pytest.mark.parametrize("side", ["request", "response"])
def test_a_body_hook_returning_no_transform_answers_500(make: Make, side: str) -> None:
    # a plugin bug (not an IBodyTransform) is the filter's failure, named, never a traceback
    # out of the connection's dataReceived
    @implementer(IRequestBodyFilter, IResponseBodyFilter)
    class Wrong:
        def requestBody(self, request: Request) -> Any:
            return b"not a transform" if side == "request" else None

        def responseBody(self, request: Request, response: Response) -> Any:
            return b"not a transform"

    h = make(filters=[Wrong()])
    c = h.connect()
    c.send(get(method=b"POST", headers=b"Content-Length: 2\r\n") + b"hi")
    up = h.accept()
    if side == "response":
        up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert status_of(c.received()) == 500 and c.closed
    [f] = h.take_failures()
    assert f.check(TypeError)
    assert "expected an IBodyTransform" in f.getErrorMessage()


def test_empty_body_with_a_final_piece_is_rechunked(make: Make) -> None:
    h = make(filters=[Both(lambda c: c if c is not None else b"appended")])
    c, up = relay(h)
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    _, fields, body = split_response(c.take())
    assert field(fields, b"content-length") is None
    assert dechunk(body) == b"appended"
    assert not c.closed


def test_a_filtered_body_that_is_not_taken_passes_as_is(make: Make) -> None:
    f = Both(responses=False)
    h = make(filters=[f])
    c, up = relay(h)
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")
    assert c.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel"  # no head held back
    up.send(b"lo")
    assert c.take() == b"lo"
    assert len(f.seen) == 1 and f.made == []


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.sampled_from([b"x", b"secret", b"sec", b"ret", b" "]), max_size=40).map(b"".join),
    st.lists(st.integers(min_value=0, max_value=300), max_size=12),
    st.booleans(),
    st.sampled_from([b"1.1", b"1.0"]),
)
def test_any_split_of_the_upstream_bytes_gives_the_same_client_body(
    body: bytes, cuts: list[int], chunked: bool, version: bytes
) -> None:
    if chunked:
        wire = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    else:
        wire, head = body, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    with Harness(filters=[redact(max_match=8)]) as h:
        c, up = relay(h, get(version=version))
        up.send(head)
        for a, b in zip(points, points[1:], strict=False):
            up.send(wire[a:b])
        _, fields, out = split_response(c.take())
        got = out if version == b"1.0" else dechunk(out)
        assert got == body.replace(b"secret", b"[REDACTED]")
        assert field(fields, b"content-length") is None
        assert c.closed == (version == b"1.0")
        assert not h.failures


def test_origin_closing_after_a_complete_response_while_a_filter_decides(make: Make) -> None:
    pending: list[Deferred[Any]] = []

    def later(chunk: bytes | None) -> Any:
        d: Deferred[Any] = Deferred()
        pending.append(d)
        return d

    h = make(filters=[Both(later)])
    c, up = relay(h)
    up.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc")
    up.lost()  # the response is complete: its END waits for the filter
    assert c.received() == b""
    pending[0].callback(b"ABC")
    pending[1].callback(b"")
    _, _, body = split_response(c.take())
    assert dechunk(body) == b"ABC"
    assert not c.closed and h.records[-1].status == 200


def test_origin_lost_mid_body_while_a_filter_decides(make: Make) -> None:
    h = make(filters=[Both(lambda c: Deferred())])
    c, up = relay(h)
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc")
    up.lost()
    assert status_of(c.received()) == 502
