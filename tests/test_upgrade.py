"""HTTP Upgrade through the relay (fwproxy.upgrade, fwproxy.relayconfig), in memory.

A Harness proxy with ``[relay] upgrade = ["websocket"]``: what goes upstream, the 101 and the
splice after it, refused upgrades (the client's next bytes are HTTP again, checked by the
rules), the pool, the idle deadline, ``ws://`` targets and the configuration.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from fwproxy.config import ConfigError, loads
from fwproxy.filters.redact import RedactFilter, RedactSpec
from fwproxy.http1 import RequestHead, RequestReader
from fwproxy.interfaces import IResponseFilter
from fwproxy.message import Request, Response
from fwproxy.record import TCP_DENIED, TCP_MISS
from fwproxy.relayconfig import is_protocol
from fwproxy.target import http_form
from fwproxy.testing import BASE_CONFIG, OK5, ORIGIN_IP, Harness, harnesses, status_of
from fwproxy.upgrade import listed, offer

CONFIG = (
    BASE_CONFIG.replace("tunnel_idle = 50", "tunnel_idle = 50\nupgrade_idle = 40").replace(
        '"allow localhost"', '"deny denied", "allow localhost"'
    )
    + '\n[acl.denied]\ndstdomain = ["denied.test"]\n\n[relay]\nupgrade = ["WebSocket"]\n'
)

UPGRADE = (
    b"GET http://example.com/chat HTTP/1.1\r\nHost: example.com\r\n"
    b"Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nKeep-Alive: 5\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
SWITCHED = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)
TO_CLIENT = (
    b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    b"Upgrade: websocket\r\nConnection: upgrade\r\n\r\n"
)
SMUGGLED = b"GET http://denied.test/admin HTTP/1.1\r\nHost: denied.test\r\n\r\n"


@pytest.fixture
def h() -> Iterator[Harness]:
    with harnesses() as make:
        yield make(CONFIG, resolver=None)


def spliced(h: Harness, early: bytes = b"") -> tuple:
    c = h.connect()
    c.send(UPGRADE + early)
    up = h.accept()
    up.take()
    up.send(SWITCHED)
    assert c.take() == TO_CLIENT
    return c, up


# -- what goes upstream -----------------------------------------------------------------------


def test_a_listed_upgrade_keeps_upgrade_and_connection_only(h: Harness) -> None:
    c = h.connect()
    c.send(UPGRADE)
    up = h.accept()
    sent = up.received()
    assert sent.startswith(b"GET /chat HTTP/1.1\r\nHost: example.com\r\n")
    assert sent.endswith(b"Upgrade: websocket\r\nConnection: upgrade\r\n\r\n")
    assert b"Keep-Alive" not in sent and sent.count(b"Connection") == 1
    assert b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==" in sent


def test_only_listed_offers_go_upstream(h: Harness) -> None:
    c = h.connect()
    c.send(UPGRADE.replace(b"Upgrade: websocket", b"Upgrade: h2c, WebSocket/13"))
    assert h.accept().received().endswith(b"Upgrade: WebSocket/13\r\nConnection: upgrade\r\n\r\n")


@pytest.mark.parametrize(
    "change",
    [
        (b"Upgrade: websocket", b"Upgrade: h2c"),  # not listed
        (b"HTTP/1.1\r\n", b"HTTP/1.0\r\n"),  # RFC 9110 7.8: ignored in HTTP/1.0
        (b"Keep-Alive: 5\r\n", b"Content-Length: 2\r\n"),  # a body: no upgrade
    ],
)
def test_other_upgrade_requests_are_stripped(h: Harness, change: tuple[bytes, bytes]) -> None:
    c = h.connect()
    body = b"hi" if b"Content-Length" in change[1] else b""
    c.send(UPGRADE.replace(*change) + body + SMUGGLED)
    up = h.accept()
    sent = up.take()
    assert b"pgrade" not in sent and b"Connection" not in sent
    up.send(SWITCHED)  # unasked: an error, never a splice
    out = c.take()
    assert status_of(out) == 502 and up.closed
    if body:  # the proxy's own answer to a request with a body closes the connection
        assert c.closed
    else:  # what followed is the next request, checked by the rules
        assert b"\nHTTP/1.1 403 " in out


def test_nothing_is_listed_by_default() -> None:
    with harnesses() as make:
        h = make()
        c = h.connect()
        c.send(UPGRADE)
        assert b"pgrade" not in h.accept().received()
        assert h.config.relay.upgrade == frozenset()


def test_offer_and_listed() -> None:
    head = RequestHead(
        b"GET", b"/", "1.1", [(b"upgrade", b"foo/1, WebSocket, bar/2")], True, False, None
    )
    assert offer(head, frozenset({"websocket", "bar/2"})) is None  # the reader held nothing
    head.upgrade = True
    assert offer(head, frozenset({"websocket", "bar/2"})) == b"WebSocket, bar/2"
    assert offer(head, frozenset({"foo/2"})) is None
    assert offer(head, frozenset()) is None
    assert listed(b"WEBSOCKET/13", frozenset({"websocket"}))
    assert not listed(b"bar/3", frozenset({"bar/2"}))


# -- the 101 and the splice -------------------------------------------------------------------


def test_101_splices_both_ways_and_is_logged_when_it_ends(h: Harness) -> None:
    c, up = spliced(h, early=b"\x81\x05early")
    assert up.take() == b"\x81\x05early"  # held until the 101, then passed on raw
    up.send(b"\x81\x02hi")
    assert c.take() == b"\x81\x02hi"
    c.send(b"GET / HTTP/1.1\r\n\r\n")  # no longer HTTP: passed on as it is
    assert up.take() == b"GET / HTTP/1.1\r\n\r\n"
    assert h.records == []
    up.send(b"\x88\x00")
    up.lost()
    assert c.closed and c.take() == b"\x88\x00"
    c.lost()
    [rec] = h.records
    assert (rec.status, rec.result, rec.target) == (101, TCP_MISS, "http://example.com/chat")
    head_size = RequestReader().feed(UPGRADE)[0][1].size
    assert rec.bytes_in == head_size + len(b"\x81\x05early") + 18
    assert rec.bytes_out == len(TO_CLIENT) + 6
    assert rec.upstream == f"{ORIGIN_IP}:80"
    assert h.clock.getDelayedCalls() == []


def test_frames_in_the_101s_read_are_passed_on(h: Harness) -> None:
    c = h.connect()
    c.send(UPGRADE)
    up = h.accept()
    up.send(SWITCHED + b"\x81\x01x")
    assert c.take() == TO_CLIENT + b"\x81\x01x"


def test_an_upgrade_offered_on_head_is_spliced_too(h: Harness) -> None:
    c = h.connect()
    c.send(UPGRADE.replace(b"GET http", b"HEAD http") + b"early")
    up = h.accept()
    assert up.take().startswith(b"HEAD /chat HTTP/1.1\r\n")
    up.send(SWITCHED + b"\x81\x01x")
    assert c.take() == TO_CLIENT + b"\x81\x01x"
    up.send(b"\x81\x01y")
    assert c.take() == b"\x81\x01y"
    assert up.take() == b"early"


def test_an_unasked_101_to_head_is_502() -> None:
    with harnesses() as make:
        h = make()  # nothing listed: Upgrade is stripped
        c = h.connect()
        c.send(UPGRADE.replace(b"GET http", b"HEAD http"))
        up = h.accept()
        up.send(SWITCHED + b"\x81\x01x")
        assert status_of(c.take()) == 502 and up.closed


def test_interim_response_then_101(h: Harness) -> None:
    c = h.connect()
    c.send(UPGRADE)
    up = h.accept()
    up.send(b"HTTP/1.1 100 Continue\r\n\r\n" + SWITCHED)
    assert c.take() == b"HTTP/1.1 100 Continue\r\n\r\n" + TO_CLIENT


def test_half_close_passes_through(h: Harness) -> None:
    c, up = spliced(h)
    c.shutdown_write()
    assert up.transport.write_closed and not c.closed
    up.send(b"last")
    assert c.take() == b"last"
    up.lost()
    assert c.closed


def test_flow_control_both_ways(h: Harness) -> None:
    c, up = spliced(h)
    c.transport.full = True
    up.send(b"download")
    assert up.paused and not c.paused
    c.transport.drain()
    assert not up.paused
    up.transport.full = True
    c.send(b"upload")
    assert c.paused and not up.paused
    up.transport.drain()
    assert not c.paused


def test_idle_deadline_closes_both(h: Harness) -> None:
    c, up = spliced(h)
    h.clock.advance(39)
    c.send(b"x")
    h.clock.advance(39)
    assert not c.closed
    h.clock.advance(1.5)
    assert c.closed and up.closed
    up.lost()
    c.lost()
    assert [r.status for r in h.records] == [101]


def test_client_gone_closes_the_upstream(h: Harness) -> None:
    c, up = spliced(h)
    c.lost(ierror.ConnectionLost)
    assert up.closed
    assert [(r.status, r.result) for r in h.records] == [(101, TCP_MISS)]


def test_the_upgraded_connection_never_reaches_the_pool(h: Harness) -> None:
    c, up = spliced(h)
    up.lost()
    c.lost()
    assert h.factory.pool.idle_count() == 0


def test_101_to_a_protocol_not_offered_is_502_and_http_goes_on(h: Harness) -> None:
    c = h.connect()
    c.send(UPGRADE + SMUGGLED)
    up = h.accept()
    up.send(SWITCHED.replace(b"Upgrade: websocket", b"Upgrade: h2c") + b"raw")
    answer = c.take()
    assert status_of(answer) == 502 and b"h2c" in answer
    assert up.closed
    assert b"\nHTTP/1.1 403 " in answer  # the bytes after the request: a request, denied


@implementer(IResponseFilter)
class Refuse101:
    def responseReceived(self, request: Request, response: Response) -> Response | None:
        if response.status == 101:
            return Response.text(403, "no websockets here")
        return None


def test_a_response_filter_can_refuse_the_101() -> None:
    with harnesses() as make:
        h = make(CONFIG, filters=[Refuse101()])
        c = h.connect()
        c.send(UPGRADE)
        up = h.accept()
        up.send(SWITCHED + b"\x81\x01x")
        assert status_of(c.take()) == 403
        assert up.closed and not c.closed


@implementer(IResponseFilter)
class Later:
    def __init__(self, answer: Response | None) -> None:
        self.answer = answer
        self.pending: list[Deferred[Response | None]] = []

    def responseReceived(self, request: Request, response: Response) -> Deferred:
        d: Deferred[Response | None] = Deferred()
        self.pending.append(d)
        return d


@pytest.mark.parametrize("refuse", [False, True])
def test_a_response_filter_deciding_later_on_the_101(refuse: bool) -> None:
    later = Later(Response.text(403, "no") if refuse else None)
    with harnesses() as make:
        h = make(CONFIG, filters=[later])
        c = h.connect()
        c.send(UPGRADE + b"early")
        up = h.accept()
        up.take()
        up.send(SWITCHED + b"\x81\x01x")
        assert c.take() == b"" and up.paused
        up.send(b"\x81\x01y")  # a read already under way: held too
        [d] = later.pending
        d.callback(later.answer)
        if refuse:
            assert status_of(c.take()) == 403 and up.closed
            return
        assert c.take() == TO_CLIENT + b"\x81\x01x\x81\x01y"
        assert up.take() == b"early" and not up.paused


# -- a refused upgrade: HTTP goes on (no smuggling) -------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [OK5, b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n"],
)
def test_after_a_refused_upgrade_the_next_bytes_are_a_request(h: Harness, answer: bytes) -> None:
    c = h.connect()
    c.send(UPGRADE + SMUGGLED)
    assert c.paused  # what follows the Upgrade request is held, not read on
    up = h.accept()
    up.take()
    up.send(answer)
    out = c.take()
    assert out.startswith(answer.split(b"\r\n")[0])
    assert out.count(b"HTTP/1.1 403 ") == 1
    assert up.take() == b""  # never passed on raw
    assert len(h.attempts) == 1  # the denied request went nowhere
    assert up.closed and h.factory.pool.idle_count() == 0  # not pooled after an upgrade
    assert [r.result for r in h.records] == [TCP_MISS, TCP_DENIED]
    assert not c.closed
    c.send(b"GET http://example.com/next HTTP/1.1\r\n\r\n")
    assert h.accept().received().startswith(b"GET /next HTTP/1.1\r\n")


def test_a_denied_upgrade_request_then_its_held_bytes(h: Harness) -> None:
    c = h.connect()
    c.send(UPGRADE.replace(b"example.com", b"denied.test") + SMUGGLED)
    assert c.take().count(b"HTTP/1.1 403 ") == 2
    assert len(h.records) == 2 and h.attempts == []


# -- ws:// and wss:// -------------------------------------------------------------------------


def test_ws_target_is_relayed_and_logged_as_http(h: Harness) -> None:
    c = h.connect()
    c.send(UPGRADE.replace(b"http://example.com/chat", b"ws://example.com:8080/chat?x=1"))
    assert [a[:2] for a in h.attempts] == [(ORIGIN_IP, 8080)]
    up = h.accept()
    assert up.take().startswith(b"GET /chat?x=1 HTTP/1.1\r\nHost: example.com:8080\r\n")
    up.send(SWITCHED)
    up.lost()
    c.lost()
    assert h.records[0].target == "http://example.com:8080/chat?x=1"


def test_wss_target_originates_tls_on_443(h: Harness) -> None:
    c = h.connect()
    c.send(b"GET WSS://example.com/ HTTP/1.1\r\n\r\n")
    [(host, port, factory, _, _)] = h.attempts
    assert (host, port) == (ORIGIN_IP, 443)
    assert isinstance(factory, TLSMemoryBIOFactory)


def test_plain_ws_request_is_an_ordinary_get(h: Harness) -> None:
    c = h.connect()
    c.send(b"GET ws://example.com/x HTTP/1.1\r\n\r\n")
    up = h.accept()
    assert up.take() == b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n"
    up.send(OK5)
    assert c.take() == OK5
    assert h.records[0].target == "http://example.com/x"


@pytest.mark.parametrize(
    "target, expected",
    [
        (b"ws://a/b", b"http://a/b"),
        (b"WsS://a:1/", b"https://a:1/"),
        (b"wss:/x", b"wss:/x"),
        (b"wsx://a", b"wsx://a"),
        (b"http://a/", b"http://a/"),
    ],
)
def test_http_form(target: bytes, expected: bytes) -> None:
    assert http_form(target) == expected


# -- configuration ----------------------------------------------------------------------------


def test_upgrade_idle_defaults_to_tunnel_idle() -> None:
    assert loads("[timeouts]\ntunnel_idle = 7\n").timeouts.upgrade_idle == 7
    config = loads("[timeouts]\ntunnel_idle = 7\nupgrade_idle = 3\n")
    assert config.timeouts.upgrade_idle == 3


def test_protocols_are_lower_cased() -> None:
    assert loads('[relay]\nupgrade = ["WebSocket", "foo/2"]\n').relay.upgrade == {
        "websocket",
        "foo/2",
    }


@pytest.mark.parametrize(
    "text, message",
    [
        ('[relay]\nupgrade = "websocket"\n', "t.toml:2: relay.upgrade: expected a list"),
        ('[relay]\nupgrade = [\n  "websocket",\n  "web socket",\n]\n', "t.toml:4: relay.upgrade"),
        ('[relay]\nupgrade = ["a/"]\n', "t.toml:2: relay.upgrade: 'a/' is not a protocol"),
        ("[relay]\nupgrade = [1]\n", "t.toml:2: relay.upgrade: 1 is not a protocol"),
        ("[relay]\nupgrades = []\n", "t.toml:2: relay.upgrades: unknown key"),
        ("[timeouts]\nupgrade_idle = 0\n", "t.toml:2: timeouts.upgrade_idle: must be greater"),
    ],
)
def test_bad_relay_config_names_file_line_and_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        loads(text, "t.toml")
    assert len(e.value.problems) == 1
    assert e.value.problems[0].startswith(message), e.value.problems


@pytest.mark.parametrize("value", ["websocket", "h2c", "foo/1.2", "x!#$%&'*+-.^_`|~"])
def test_is_protocol(value: str) -> None:
    assert is_protocol(value)


@pytest.mark.parametrize("value", ["", "/", "a/", "/b", "a b", "a/b/c", "é", "a,b"])
def test_is_not_protocol(value: str) -> None:
    assert not is_protocol(value)


def test_a_refused_upgrade_still_runs_the_response_body_filters() -> None:
    # an Upgrade header on any GET must not take its response past the body filters
    spec = RedactSpec.from_options({"patterns": ["secret"]})
    with harnesses() as make:
        h = make(CONFIG, filters=[RedactFilter(spec)])
        c = h.connect()
        c.send(UPGRADE)
        up = h.accept()
        up.take()
        up.send(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\nsecret 42"
        )
        out = c.take()
        assert status_of(out) == 200
        assert b"secret" not in out


def test_a_101_is_spliced_with_body_filters_configured() -> None:
    spec = RedactSpec.from_options({"patterns": ["secret"]})
    with harnesses() as make:
        h = make(CONFIG, filters=[RedactFilter(spec)])
        c = h.connect()
        c.send(UPGRADE + b"early")
        up = h.accept()
        up.take()
        up.send(SWITCHED + b"secret frame")
        assert c.take() == TO_CLIENT + b"secret frame"  # another protocol's bytes: not HTTP's
        assert up.take() == b"early"
