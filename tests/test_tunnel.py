"""CONNECT tunnels (fwproxy.tunnel), in memory: answer, splice, half-close, timeouts, records."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol
from zope.interface import implementer
from zope.interface.verify import verifyObject

from fwproxy.interfaces import IConnectFilter
from fwproxy.message import Request, Response
from fwproxy.record import TCP_DENIED, TCP_TUNNEL, TCP_TUNNEL_ABORTED
from fwproxy.target import parse_authority
from fwproxy.testing import (
    BASE_CONFIG,
    ORIGIN_IP,
    Client,
    FakeResolver,
    Harness,
    Upstream,
    status_of,
)
from fwproxy.tunnel import ESTABLISHED, TunnelUpstream


def connect_head(authority: bytes = b"example.com:443", version: bytes = b"1.1") -> bytes:
    return b"CONNECT " + authority + b" HTTP/" + version + b"\r\nHost: " + authority + b"\r\n\r\n"


def tunnel(h: Harness, authority: bytes = b"example.com:443") -> tuple[Client, Upstream]:
    c = h.connect()
    c.send(connect_head(authority))
    up = h.accept()
    assert c.take() == ESTABLISHED
    return c, up


@implementer(IConnectFilter)
class ConnectHook:
    def __init__(self, answer: Callable[[Request], Any]) -> None:
        self.answer = answer
        self.seen: list[Request] = []

    def connectReceived(self, request: Request) -> Any:
        self.seen.append(request)
        return self.answer(request)


def test_established_then_bytes_spliced_both_ways(h: Harness) -> None:
    c = h.connect()
    c.send(connect_head())
    assert c.received() == b""  # nothing before the upstream connection is made
    assert [a[:2] for a in h.attempts] == [(ORIGIN_IP, 443)]
    assert h.attempts[0][3] == h.config.timeouts.connect
    up = h.accept()
    verifyObject(IHalfCloseableProtocol, up.proto)
    assert isinstance(up.proto, TunnelUpstream)
    assert c.take() == b"HTTP/1.1 200 Connection established\r\n\r\n"
    assert up.received() == b""  # the CONNECT head is not forwarded
    c.send(b"\x16\x03\x01client hello")
    assert up.take() == b"\x16\x03\x01client hello"
    up.send(b"\x16\x03\x03server hello")
    assert c.take() == b"\x16\x03\x03server hello"
    c.send(b"GET / HTTP/1.1\r\n\r\n")  # HTTP inside a tunnel is just bytes
    assert up.take() == b"GET / HTTP/1.1\r\n\r\n"
    assert not c.closed and not up.closed
    assert h.records == []  # recorded when it ends


def test_bytes_behind_the_connect_head_reach_the_upstream_in_order(h: Harness) -> None:
    c = h.connect()
    c.send(connect_head() + b"early-1|")
    c.send(b"early-2|")
    assert c.paused  # nothing more is read until the tunnel exists
    up = h.accept()
    assert up.take() == b"early-1|early-2|"
    assert not c.paused
    c.send(b"later")
    assert up.take() == b"later"


def test_client_half_close_is_passed_on(h: Harness) -> None:
    c, up = tunnel(h)
    c.send(b"request")
    c.shutdown_write()
    assert up.transport.write_closed
    assert not up.closed and not c.closed
    up.send(b"response")  # the other direction still flows
    assert c.take() == b"response"
    up.shutdown_write()
    assert c.closed and up.closed
    [rec] = h.records
    assert rec.result == TCP_TUNNEL


def test_upstream_half_close_is_passed_on(h: Harness) -> None:
    c, up = tunnel(h)
    up.send(b"bye")
    up.shutdown_write()
    assert c.transport.write_closed
    assert not c.closed and not up.closed
    c.send(b"more")
    assert up.take() == b"more"
    c.shutdown_write()
    assert c.closed and up.closed
    assert h.records[0].result == TCP_TUNNEL


def test_client_half_close_before_the_upstream_connects(h: Harness) -> None:
    c = h.connect()
    c.send(connect_head() + b"only this")
    c.shutdown_write()
    assert not c.closed
    up = h.accept()
    assert c.take() == ESTABLISHED
    assert up.received() == b"only this"
    assert up.transport.write_closed
    up.send(b"answer")
    assert c.take() == b"answer"


def test_tunnel_idle_timeout_closes_both(h: Harness) -> None:
    c, up = tunnel(h)
    h.clock.advance(30)
    c.send(b"x")  # activity pushes the idle deadline back
    h.clock.advance(30)
    up.send(b"y")
    h.clock.advance(49.9)
    assert not c.closed and not up.closed
    h.clock.advance(0.1)
    assert c.closed and up.closed
    [rec] = h.records
    assert rec.result == TCP_TUNNEL
    assert rec.duration == pytest.approx(110)


def test_tunnel_idle_timeout_applies_to_a_silent_tunnel(h: Harness) -> None:
    c, up = tunnel(h)
    h.clock.advance(h.config.timeouts.tunnel_idle)
    assert c.closed and up.closed


def test_tunnel_record_has_the_byte_counts(h: Harness) -> None:
    c, up = tunnel(h)
    c.send(b"a" * 100)
    up.send(b"b" * 1000)
    c.send(b"a" * 23)
    c.shutdown_write()
    up.shutdown_write()
    [rec] = h.records
    assert (rec.method, rec.target, rec.status, rec.result) == (
        "CONNECT",
        "example.com:443",
        200,
        TCP_TUNNEL,
    )
    assert rec.upstream == f"{ORIGIN_IP}:443"
    assert rec.bytes_out == len(ESTABLISHED) + 1000
    head = len(connect_head())
    assert 123 <= rec.bytes_in <= 123 + head


def test_client_gone_closes_the_upstream(h: Harness) -> None:
    c, up = tunnel(h)
    c.send(b"x")
    c.lost(ierror.ConnectionLost)
    assert up.closed
    [rec] = h.records
    assert rec.result == TCP_TUNNEL  # established: complete however it ends (as in Squid)
    up.lost()
    assert len(h.records) == 1
    assert h.clock.getDelayedCalls() == []


def test_upstream_gone_closes_the_client(h: Harness) -> None:
    c, up = tunnel(h)
    up.send(b"x")
    up.lost(ierror.ConnectionLost)
    assert c.closed
    assert c.take() == b"x"
    c.lost()
    assert len(h.records) == 1
    assert h.clock.getDelayedCalls() == []


def test_tunnel_flow_control_both_ways(h: Harness) -> None:
    c, up = tunnel(h)
    assert c.transport.producer.producer is up.transport and c.transport.streaming
    assert up.transport.producer.producer is c.transport and up.transport.streaming
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


def test_connect_to_a_denied_port_gets_403(h: Harness) -> None:
    c = h.connect()
    c.send(connect_head(b"example.com:8443") + b"early")
    assert status_of(c.received()) == 403
    assert c.closed
    assert h.attempts == []
    [rec] = h.records
    assert rec.result == TCP_DENIED and rec.status == 403 and rec.method == "CONNECT"


def test_connect_from_a_denied_client_gets_403(h: Harness) -> None:
    c = h.connect(("10.1.1.1", 1000))
    c.send(connect_head())
    assert status_of(c.received()) == 403
    assert h.attempts == []


@pytest.mark.parametrize(
    "authority",
    [
        b"example.com",
        b"example.com:",
        b"example.com:0",
        b"example.com:65536",
        b"example.com:https",
        b":443",
        b"[::1:443",
        b"[::1]443",
        b"[example.com]:443",
        b"::1:443",
        b"user@example.com:443",
        b"http://example.com:443",
    ],
)
def test_bad_authority_gets_400(h: Harness, authority: bytes) -> None:
    c = h.connect()
    c.send(connect_head(authority))
    assert status_of(c.received()) == 400
    assert c.closed
    assert h.attempts == []


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        ("example.com:443", ("example.com", 443)),
        ("EXAMPLE.com:443", ("example.com", 443)),
        ("[::1]:443", ("::1", 443)),
        ("[2001:DB8::1]:8443", ("2001:db8::1", 8443)),
        ("10.0.0.1:65535", ("10.0.0.1", 65535)),
    ],
)
def test_parse_authority(authority: str, expected: tuple[str, int]) -> None:
    assert parse_authority(authority.encode()) == expected


def test_ipv6_authority(h: Harness) -> None:
    c = h.connect()
    c.send(connect_head(b"[2001:db8::1]:443"))
    assert [a[:2] for a in h.attempts] == [("2001:db8::1", 443)]
    up = h.accept()
    assert c.take() == ESTABLISHED
    c.send(b"x")
    assert up.received() == b"x"
    c.shutdown_write()
    up.shutdown_write()
    assert h.records[0].upstream == "[2001:db8::1]:443"
    assert h.records[0].target == "[2001:db8::1]:443"


def test_ipv6_loopback_authority(h: Harness) -> None:
    c = h.connect()
    c.send(connect_head(b"[::1]:443"))
    assert [a[:2] for a in h.attempts] == [("::1", 443)]


def test_connect_refused_gets_502(h: Harness) -> None:
    c = h.connect()
    c.send(connect_head())
    h.refuse()
    assert status_of(c.received()) == 502
    assert c.closed
    [rec] = h.records
    assert rec.status == 502 and rec.upstream == ""


def test_connect_timeout_gets_504(h: Harness) -> None:
    c = h.connect()
    c.send(connect_head())
    h.clock.advance(9.9)
    assert c.received() == b""
    h.clock.advance(0.1)
    assert status_of(c.received()) == 504
    assert c.closed
    assert h.clock.connectors[0].stoppedConnecting


def test_reactor_connect_timeout_gets_504(h: Harness) -> None:
    c = h.connect()
    c.send(connect_head())
    h.refuse(reason=ierror.TimeoutError())
    assert status_of(c.received()) == 504


def test_unresolvable_connect_target_gets_502(h: Harness) -> None:
    c = h.connect()
    c.send(connect_head(b"gone.test:443"))
    assert status_of(c.received()) == 502
    assert h.attempts == []


def test_slow_dns_for_connect_gets_504(make: Callable[..., Harness]) -> None:
    resolver = FakeResolver()
    resolver.deferred.add("example.com")
    h = make(resolver=resolver)
    c = h.connect()
    c.send(connect_head())
    h.clock.advance(10)
    assert status_of(c.received()) == 504
    assert h.attempts == []


def test_connect_to_the_proxy_itself_is_refused(make: Callable[..., Harness]) -> None:
    h = make()
    c = h.connect(local=("127.0.0.1", 443))
    c.send(connect_head(b"127.0.0.1:443"))
    assert 400 <= status_of(c.received()) < 600
    assert h.attempts == []


def test_connect_filter_answer_prevents_the_tunnel(make: Callable[..., Harness]) -> None:
    hook = ConnectHook(lambda r: Response.text(403, "not there"))
    h = make(filters=[hook])
    verifyObject(IConnectFilter, hook)
    c = h.connect()
    c.send(connect_head())
    assert status_of(c.received()) == 403
    assert [(r.method, r.host, r.port) for r in hook.seen] == [("CONNECT", "example.com", 443)]
    assert h.attempts == []


def test_deferred_connect_filter(make: Callable[..., Harness]) -> None:
    d: Deferred[Any] = Deferred()
    h = make(filters=[ConnectHook(lambda r: d)])
    c = h.connect()
    c.send(connect_head() + b"early")
    assert h.attempts == []
    assert c.paused
    d.callback(None)
    up = h.accept()
    assert c.take() == ESTABLISHED
    assert up.received() == b"early"


def test_connect_filter_narrowing_addresses(make: Callable[..., Harness]) -> None:
    def narrow(request: Request) -> None:
        request.addresses = ["192.0.2.9"]

    h = make(filters=[ConnectHook(narrow)])
    c = h.connect()
    c.send(connect_head())
    assert [a[:2] for a in h.attempts] == [("192.0.2.9", 443)]
    assert h.resolver.calls == []


def test_connect_filter_that_raises_gets_500(make: Callable[..., Harness]) -> None:
    def boom(request: Request) -> None:
        raise RuntimeError("bug")

    h = make(filters=[ConnectHook(boom)])
    c = h.connect()
    c.send(connect_head())
    assert status_of(c.received()) == 500
    assert c.closed
    assert len(h.take_failures()) == 1


def test_connect_after_a_relayed_request_on_one_connection(h: Harness) -> None:
    c = h.connect()
    c.send(b"GET http://example.com/ HTTP/1.1\r\n\r\n")
    h.accept().send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert c.take().endswith(b"ok")
    c.send(connect_head())
    up = h.accept()
    assert c.take() == ESTABLISHED
    c.send(b"x")
    assert up.received() == b"x"
    up.send(b"y")
    assert c.received() == b"y"


def test_http10_connect(h: Harness) -> None:
    c = h.connect()
    c.send(connect_head(version=b"1.0"))
    up = h.accept()
    assert c.take() == ESTABLISHED
    up.send(b"z")
    assert c.take() == b"z"


def test_client_gone_while_connecting(h: Harness) -> None:
    c = h.connect()
    c.send(connect_head())
    c.lost()
    assert h.clock.connectors[0].stoppedConnecting
    [rec] = h.records
    assert rec.result == TCP_TUNNEL_ABORTED
    assert h.clock.getDelayedCalls() == []


CONNECT_ANY = BASE_CONFIG.replace('"deny connect !ssl_ports", ', "")


def test_connect_allowed_to_other_ports_by_policy(make: Callable[..., Harness]) -> None:
    h = make(CONNECT_ANY)
    c = h.connect()
    c.send(connect_head(b"example.com:22"))
    assert [a[:2] for a in h.attempts] == [(ORIGIN_IP, 22)]
