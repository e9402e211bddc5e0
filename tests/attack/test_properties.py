"""Property tests (hypothesis) over the request parser and over whole client connections.

(a) :class:`fwproxy.http1.RequestReader`: any byte stream, fed in any split, never raises out of
    ``feed()``; the events form a valid sequence (``HEAD BODY* END`` repeated, a CONNECT's
    ``HEAD END REST``, or an ``ERROR`` last, nothing after it); and feeding the same bytes in one
    piece or in random pieces gives the same heads, bodies, errors (BODY boundaries aside).

(b) A whole client connection: :class:`fwproxy.factory.ProxyFactory` on a ``MemoryReactorClock``
    with a fake resolver, the client and every upstream on ``StringTransport``. Any bytes, in any
    split, with upstreams that answer, refuse, or never answer: nothing raises out of the
    protocol and nothing is logged as a failure; after the clock has passed every configured
    timeout the client connection is closed (never hangs); and the bytes written to each
    upstream parse, with a fresh RequestReader, as valid requests — exactly as many as the
    complete valid requests the client sent, for streams of valid requests with or without
    garbage or a truncated request behind them.

The number of examples each property ran is printed (``-s``) and appended to
/tmp/fwproxy-figures.txt.
"""

from __future__ import annotations

import gc
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import globalLogPublisher

from fwproxy.config import loads
from fwproxy.http1 import BODY, END, ERROR, HEAD, REST, RequestReader
from fwproxy.testing import RESPONSES, WORLD_CONFIG, World, horizon

from .support import record_figure

CONFIG = loads(WORLD_CONFIG)  # what World runs by default

RUNS: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    for name, n in sorted(RUNS.items()):
        record_figure(f"hypothesis.{name}.examples", n)


def limited(n: int) -> settings:
    """``max_examples=n``, no deadline (the protocol examples build a whole proxy)."""
    return settings(max_examples=n, deadline=None, suppress_health_check=_SUPPRESS)


_SUPPRESS = (
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
    HealthCheck.function_scoped_fixture,
)

# -- byte streams --------------------------------------------------------------------------

HOSTS = [b"example.com", b"example.com:8080", b"gone.test", b"93.184.216.34", b"other.test"]
TOKENS = [
    b"GET ",
    b"POST ",
    b"HEAD ",
    b"PUT ",
    b"CONNECT ",
    b"OPTIONS ",
    b"get ",
    b"GET  ",
    b"http://example.com/",
    b"http://other.test:81/x?y",
    b"https://example.com/",
    b"/healthz",
    b"*",
    b"example.com:443",
    b" HTTP/1.1\r\n",
    b" HTTP/1.0\r\n",
    b" HTTP/2.0\r\n",
    b" HTTP/1.1\n",
    b"\r\n",
    b"\n",
    b"\r",
    b"\r\n\r\n",
    b"Host: example.com\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 0\r\n",
    b"Content-Length: -1\r\n",
    b"Content-Length: 5\r\nContent-Length: 6\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: identity\r\n",
    b"Transfer-Encoding : chunked\r\n",
    b"Connection: close\r\n",
    b"Connection: keep-alive\r\n",
    b"Upgrade: websocket\r\nConnection: upgrade\r\n",
    b"Expect: 100-continue\r\n",
    b"X-A: b\r\n",
    b" folded\r\n",
    b"5\r\nhello\r\n",
    b"0\r\n\r\n",
    b"ffffffffffffffffff\r\n",
    b'5;ext="q"\r\n',
    b"hello",
    b":",
    b" ",
    b"\t",
    b"\x00",
    b"\xff",
    b"a" * 300,
]


@st.composite
def valid_request(draw: Any, hosts: list[bytes] = HOSTS[:2]) -> bytes:
    """One complete, relayable, keep-alive request."""
    host = draw(st.sampled_from(hosts))
    path = b"/" + draw(st.from_regex(rb"\A[a-z0-9/._-]{0,20}\Z", fullmatch=True))
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS"]))
    fields = [b"Host: " + host]
    extra = draw(
        st.lists(
            st.sampled_from(
                [
                    b"Accept: */*",
                    b"X-A: 1",
                    b"User-Agent: t/1",
                    b"Connection: keep-alive",
                    b"X-Forwarded-For: 1.2.3.4",
                    b"Proxy-Authorization: Basic eDp5",
                ]
            ),
            max_size=4,
        )
    )
    fields += extra
    body = b""
    framing = draw(
        st.sampled_from(["none", "cl", "chunked"]) if method != b"GET" else st.just("none")
    )
    if framing == "cl":
        body = draw(st.binary(max_size=40))
        fields.append(b"Content-Length: %d" % len(body))
    elif framing == "chunked":
        pieces = draw(st.lists(st.binary(min_size=1, max_size=20), max_size=3))
        fields.append(b"Transfer-Encoding: chunked")
        body = b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"
    head = (
        method
        + b" http://"
        + host
        + path
        + b" HTTP/1.1\r\n"
        + b"".join(f + b"\r\n" for f in fields)
        + b"\r\n"
    )
    return head + body


http_ish = st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=6)), max_size=40).map(
    b"".join
)
valid_stream = st.lists(valid_request(HOSTS), min_size=1, max_size=4).map(b"".join)
any_stream = st.one_of(
    st.binary(max_size=400),
    http_ish,
    st.tuples(valid_stream, http_ish).map(b"".join),
    st.tuples(valid_stream, st.binary(max_size=50)).map(b"".join),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return [p for p in out if p] or [b""]


# -- (a) RequestReader ---------------------------------------------------------------------

LIMITS = {"max_head_size": 512, "max_headers": 12, "max_target": 200}


def feed_all(pieces: list[bytes]) -> list[tuple[int, Any]]:
    """Feed ``pieces`` to a fresh reader as ProxyProtocol does (after REST, the rest of the
    stream is the tunnel's); return every event. feed() must never raise."""
    reader = RequestReader(**LIMITS)
    events: list[tuple[int, Any]] = []
    raw = False
    dead = False
    for p in pieces:
        if raw:
            events.append((REST, p))
            continue
        got = reader.feed(p)
        if dead:
            assert got == [], f"events after ERROR: {got}"
        events.extend(got)
        if any(k == REST for k, _ in got):
            raw = True
        if any(k == ERROR for k, _ in got):
            dead = True
    return events


def check_grammar(events: list[tuple[int, Any]]) -> None:
    state = "idle"  # idle | body | rest | dead
    connect = False
    length = 0
    head = None
    for i, (kind, payload) in enumerate(events):
        assert state != "dead", f"event after ERROR: {events[i:]}"
        if state == "rest":
            assert kind == REST, f"{kind} after REST"
            continue
        if kind == ERROR:
            assert 400 <= payload.status < 600, payload.status
            state = "dead"
        elif kind == HEAD:
            assert state == "idle", f"HEAD inside a message: {events}"
            head = payload
            assert head.version in ("1.0", "1.1")
            assert head.method and head.target
            assert not (head.chunked and head.content_length is not None)
            connect = head.method == b"CONNECT"
            state, length = "body", 0
        elif kind == BODY:
            assert state == "body" and not connect, f"BODY outside a message: {events}"
            length += len(payload)
        elif kind == END:
            assert state == "body", f"END outside a message: {events}"
            if head.content_length is not None and not head.chunked and not connect:
                assert length == head.content_length
            state = "after-connect" if connect else "idle"
        elif kind == REST:
            assert state == "after-connect", f"REST not right after a CONNECT: {events}"
            state = "rest"
        else:
            raise AssertionError(f"unknown event {kind}")
        if state == "after-connect" and kind != END:
            raise AssertionError("after a CONNECT's END only REST may come")


def normal(events: list[tuple[int, Any]]) -> list[tuple]:
    out: list[tuple] = []
    for kind, p in events:
        if kind == HEAD:
            out.append(
                (
                    "HEAD",
                    p.method,
                    p.target,
                    p.version,
                    tuple(p.headers),
                    p.keep_alive,
                    p.chunked,
                    p.content_length,
                )
            )
        elif kind in (BODY, REST):
            tag = "BODY" if kind == BODY else "REST"
            if out and out[-1][0] == tag:
                out[-1] = (tag, out[-1][1] + p)
            elif p:
                out.append((tag, p))
        elif kind == END:
            out.append(("END",))
        else:
            out.append(("ERROR", p.status))
    return out


@limited(1000)
@given(data=any_stream, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_request_reader_any_bytes_any_split(data: bytes, cuts: list[int]) -> None:
    RUNS["request_reader"] += 1
    whole = feed_all([data])
    pieces = feed_all(split(data, cuts))
    check_grammar(whole)
    check_grammar(pieces)
    bytewise = feed_all([data[i : i + 1] for i in range(len(data))]) if len(data) < 600 else pieces
    check_grammar(bytewise)
    assert normal(pieces) == normal(whole), (split(data, cuts), normal(whole), normal(pieces))
    assert normal(bytewise) == normal(whole)


# -- (b) whole connections -------------------------------------------------------------------


class _Failures:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            self.events.append(event)


@pytest.fixture
def failures():
    """Failures the proxy logs: checked after each example, and once more after a garbage
    collection at the end of the test (unhandled errors in lost Deferreds are logged then;
    collecting after every example would cost more than the example)."""
    f = _Failures()
    globalLogPublisher.addObserver(f)
    try:
        yield f
        gc.collect()
        _no_failures(f)
    finally:
        globalLogPublisher.removeObserver(f)


def _no_failures(f: _Failures) -> None:
    found = [e["log_failure"].getTraceback() if e.get("log_failure") else str(e) for e in f.events]
    f.events.clear()
    assert not found, found


def reference_count(data: bytes) -> int:
    """An upper bound: the complete absolute-form requests in ``data`` before a CONNECT or
    an error (with the proxy's own limits)."""
    limits = CONFIG.limits
    reader = RequestReader(limits.max_header_size, limits.max_headers, limits.max_target)
    n = 0
    relay = False
    for kind, p in reader.feed(data):
        if kind == HEAD:
            if p.method == b"CONNECT":
                break
            relay = p.target.startswith(b"http://")
        elif kind == ERROR:
            break
        elif kind == END and relay:
            n += 1
    return n


ATTEMPTS = st.lists(st.sampled_from(["accept", "accept", "refuse", "hang"]), max_size=4)
ANSWERS = st.lists(st.sampled_from(list(RESPONSES) + ["silent"]), max_size=4)


@limited(2000)
@given(
    data=any_stream,
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
    attempts=ATTEMPTS,
    answers=ANSWERS,
    half_close=st.booleans(),
)
def test_any_bytes_never_raise_never_hang(
    failures, data, cuts, attempts, answers, half_close
) -> None:
    RUNS["connection_any_bytes"] += 1
    world = World(attempts, answers)
    for piece in split(data, cuts):
        if world.client_lost:
            break
        world.client.dataReceived(piece)
        world.pump()
    if half_close and not world.client_lost:
        world.client.readConnectionLost()
        world.pump()
    world.run_out_the_clock()
    assert world.client_lost, (
        f"the connection is still open {horizon(CONFIG)} s after the last byte: "
        f"{world.client_t.value()[-300:]!r}"
    )
    assert world.forwarded() <= reference_count(data), "more requests upstream than sent"
    assert not world.factory.connections, "the factory still counts a closed connection"
    _no_failures(failures)


TAILS = st.one_of(
    st.just(b""),
    st.sampled_from(
        [
            b"GARBAGE\r\n\r\n",
            b"GET http://example.com/ HTTP/9.9\r\n\r\n",
            (
                b"POST http://example.com/ HTTP/1.1\r\nContent-Length: 1\r\n"
                b"Content-Length: 2\r\n\r\nab"
            ),
            b"\x00\x01\x02",
        ]
    ),
    # a truncated request: part of a head, or a head and part of its body
    valid_request()
    .filter(lambda r: len(r) > 2)
    .flatmap(lambda r: st.integers(1, len(r) - 1).map(lambda i: r[:i])),
)


@limited(1000)
@given(
    requests=st.lists(valid_request(), min_size=1, max_size=5),
    tail=TAILS,
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
    answers=st.lists(st.sampled_from(["cl", "chunked"]), max_size=3),
    half_close=st.booleans(),
)
def test_upstream_gets_exactly_the_valid_requests(
    failures, requests, tail, cuts, answers, half_close
) -> None:
    RUNS["connection_valid_requests"] += 1
    data = b"".join(requests) + tail
    world = World(["accept"], answers)
    for piece in split(data, cuts):
        if world.client_lost:
            break
        world.client.dataReceived(piece)
        world.pump()
    if half_close and not world.client_lost:
        world.client.readConnectionLost()
        world.pump()
    world.run_out_the_clock()
    assert world.client_lost, "the connection never closed"
    assert world.forwarded() == len(requests), (
        f"{len(requests)} complete valid requests sent, {world.forwarded()} reached upstream; "
        f"client got {world.client_t.value()[:600]!r}"
    )
    # and the client got one 200 per request, in order, before anything else
    out = world.client_t.value()
    assert out.count(b"HTTP/1.1 200 OK\r\n") >= len(requests), out[:600]
    assert out.startswith(b"HTTP/1.1 200 OK\r\n"), out[:300]
    _no_failures(failures)


@limited(300)
@given(
    cuts=st.lists(st.integers(0, 10_000), max_size=6),
    connect=st.sampled_from(
        [
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            b"CONNECT example.com:443 HTTP/1.0\r\n\r\n",
        ]
    ),
    after=st.binary(max_size=200),
)
def test_tunnel_bytes_pass_unchanged(failures, cuts, connect, after) -> None:
    """After a CONNECT is established, the upstream gets the client's bytes exactly, however
    they were split (including bytes sent with the CONNECT head, before the 200)."""
    RUNS["connection_tunnel"] += 1
    data = connect + after
    world = World(["accept"], ["cl"])
    for piece in split(data, cuts):
        world.client.dataReceived(piece)
        world.pump()
    tunnels = [u for u in world.upstreams if not u.relay]
    assert len(tunnels) == 1, world.client_t.value()[:500]
    assert tunnels[0].transport.value() == after
    assert world.client_t.value() == b"HTTP/1.1 200 Connection established\r\n\r\n"
    world.run_out_the_clock()
    assert world.client_lost, "an idle tunnel outlived tunnel_idle"
    _no_failures(failures)


def test_connect_pipelined_after_a_request_is_answered(failures) -> None:
    """A CONNECT pipelined behind a GET (both in one segment) must be answered once the GET's
    response is done (RFC 9112 §9.3.2 pipelining; nothing forbids a CONNECT last), not dropped
    by closing the connection without a word."""
    world = World(["accept"], ["cl"])
    world.client.dataReceived(
        b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n"
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\nhello"
    )
    world.pump()
    out = world.client_t.value()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n"), out
    assert out.endswith(b"\r\nok" + b"HTTP/1.1 200 Connection established\r\n\r\n"), (
        f"the pipelined CONNECT was not answered: client got {out!r}, closed={world.client_lost}"
    )
    tunnels = [u for u in world.upstreams if not u.relay]
    assert len(tunnels) == 1 and tunnels[0].transport.value() == b"hello"


def test_dns_that_never_answers_does_not_hang(failures) -> None:
    """A sanity example for (b): a name whose resolution never completes gets 504."""
    world = World(["accept"], ["cl"])
    world.client.dataReceived(b"GET http://slow.test/ HTTP/1.1\r\nHost: slow.test\r\n\r\n")
    world.pump()
    world.run_out_the_clock()
    assert world.client_t.value().startswith(b"HTTP/1.1 504 "), world.client_t.value()[:200]
    _no_failures(failures)
