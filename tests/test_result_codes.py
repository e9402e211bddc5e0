"""Result codes in the access record, in memory: how an established tunnel ends, and what a
failed or refused request logs, side by side for a relayed GET and for CONNECT.

The rules follow Squid (src/tunnel.cc, src/LogTags.cc): a CONNECT that got its ``200`` is
``TCP_TUNNEL`` however the tunnel ends — FIN from either side first, a reset from either side,
the idle timeout — because a client that resets after its last read cannot be told apart from
one that gave up. A CONNECT whose upstream could not be reached is ``TCP_TUNNEL`` with the
error status, as a GET is ``TCP_MISS``: the result code names the handling path and the status
says what happened (Squid 7, bug 5148; Squid <= 6 logged ``NONE_NONE`` there).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from twisted.internet import error as ierror

from fwproxy.record import TCP_DENIED, TCP_MISS, TCP_TUNNEL, TCP_TUNNEL_ABORTED
from fwproxy.testing import Client, FakeResolver, Harness, Upstream, get, status_of
from fwproxy.tunnel import ESTABLISHED


def connect_head(authority: bytes = b"example.com:443") -> bytes:
    return b"CONNECT " + authority + b" HTTP/1.1\r\nHost: " + authority + b"\r\n\r\n"


def client_fin_then_upstream_fin(h: Harness, c: Client, up: Upstream) -> None:
    c.shutdown_write()
    up.shutdown_write()


def upstream_fin_then_client_fin(h: Harness, c: Client, up: Upstream) -> None:
    up.shutdown_write()
    c.shutdown_write()


def client_reset(h: Harness, c: Client, up: Upstream) -> None:
    # a client that closes its socket with bytes still unread: the kernel sends RST, not FIN
    c.lost(ierror.ConnectionLost)


def upstream_fin_then_client_reset(h: Harness, c: Client, up: Upstream) -> None:
    # urllib reading only the head of an HTTPS response: the origin closes after the body, the
    # client closes with the body's TLS records unread (the order strace showed at the proxy)
    up.send(b"\x17\x03\x03 response head and body records")
    up.shutdown_write()
    assert c.transport.write_closed
    c.lost(ierror.ConnectionLost)


def upstream_fin_then_upstream_reset(h: Harness, c: Client, up: Upstream) -> None:
    # the origin resets after its FIN (bytes from the client reached its closed socket). A TCP
    # transport tells its producer (the client's transport, write side already shut) to stop
    # before its protocol hears of the loss, and Twisted then drops the client at once: the
    # client's connectionLost comes first, without an EOF from the client
    up.shutdown_write()
    c.lost(ierror.ConnectionDone)
    up.lost(ierror.ConnectionLost)


def upstream_reset(h: Harness, c: Client, up: Upstream) -> None:
    up.lost(ierror.ConnectionLost)


def idle_timeout(h: Harness, c: Client, up: Upstream) -> None:
    h.clock.advance(h.config.timeouts.tunnel_idle)


@pytest.mark.parametrize(
    "ending",
    [
        client_fin_then_upstream_fin,
        upstream_fin_then_client_fin,
        client_reset,
        upstream_fin_then_client_reset,
        upstream_fin_then_upstream_reset,
        upstream_reset,
        idle_timeout,
    ],
)
def test_an_established_tunnel_is_tcp_tunnel_however_it_ends(
    h: Harness, ending: Callable[[Harness, Client, Upstream], None]
) -> None:
    c = h.connect()
    c.send(connect_head())
    up = h.accept()
    assert c.take() == ESTABLISHED
    c.send(b"client hello")
    up.send(b"server hello")
    ending(h, c, up)
    assert c.closed and up.closed
    [rec] = h.records
    assert (rec.status, rec.result) == (200, TCP_TUNNEL)
    assert rec.bytes_out >= len(ESTABLISHED) + len(b"server hello")
    # the connection's end is reported again by the transports: still one record
    c.lost(ierror.ConnectionLost)
    up.lost(ierror.ConnectionLost)
    assert len(h.records) == 1


def test_a_client_gone_before_the_200_is_still_aborted(h: Harness) -> None:
    """Only an established tunnel is complete: a CONNECT left while connecting is aborted,
    with no status (the boundary of the rule above)."""
    c = h.connect()
    c.send(connect_head())
    c.lost(ierror.ConnectionLost)
    [rec] = h.records
    assert (rec.status, rec.result) == (0, TCP_TUNNEL_ABORTED)


# -- failures and denials: GET and CONNECT side by side ---------------------------------------


def refused(h: Harness) -> None:
    h.refuse()


def unreachable(h: Harness) -> None:
    h.refuse(reason=ierror.NoRouteError())


def connect_timeout(h: Harness) -> None:
    h.clock.advance(h.config.timeouts.connect)


def reactor_connect_timeout(h: Harness) -> None:
    h.refuse(reason=ierror.TimeoutError())


def nothing(h: Harness) -> None:
    pass


#: (case, host, what happens once the proxy has sent the request on, the status sent)
FAILURES = [
    ("refused", b"example.com", refused, 502),
    ("unreachable", b"example.com", unreachable, 502),
    ("dns-failure", b"gone.test", nothing, 502),
    ("connect-timeout", b"example.com", connect_timeout, 504),
    ("reactor-connect-timeout", b"example.com", reactor_connect_timeout, 504),
]


def _request(method: str, host: bytes) -> bytes:
    if method == "GET":
        return get(b"http://" + host + b":443/")
    return connect_head(host + b":443")


@pytest.mark.parametrize("method", ["GET", "CONNECT"])
@pytest.mark.parametrize(("case", "host", "then", "status"), FAILURES, ids=[f[0] for f in FAILURES])
def test_upstream_failure_codes(
    h: Harness,
    method: str,
    case: str,
    host: bytes,
    then: Callable[[Harness], None],
    status: int,
) -> None:
    c = h.connect()
    c.send(_request(method, host))
    then(h)
    assert status_of(c.received()) == status
    [rec] = h.records
    expected = TCP_MISS if method == "GET" else TCP_TUNNEL
    assert (rec.method, rec.status, rec.result) == (method, status, expected)


def test_slow_dns_is_a_connect_timeout_for_both(make: Callable[..., Harness]) -> None:
    resolver = FakeResolver()
    resolver.deferred.add("example.com")
    h = make(resolver=resolver)
    for method in ("GET", "CONNECT"):
        c = h.connect()
        c.send(_request(method, b"example.com"))
        h.clock.advance(h.config.timeouts.connect)
        assert status_of(c.received()) == 504
    assert [(r.method, r.status, r.result) for r in h.records] == [
        ("GET", 504, TCP_MISS),
        ("CONNECT", 504, TCP_TUNNEL),
    ]


@pytest.mark.parametrize("method", ["GET", "CONNECT"])
def test_denied_client_is_tcp_denied_for_both(h: Harness, method: str) -> None:
    c = h.connect(("10.1.1.1", 1000))
    c.send(_request(method, b"example.com"))
    assert status_of(c.received()) == 403
    assert h.attempts == []
    [rec] = h.records
    assert (rec.method, rec.status, rec.result) == (method, 403, TCP_DENIED)


def test_denied_connect_port_is_tcp_denied(h: Harness) -> None:
    c = h.connect()
    c.send(connect_head(b"example.com:8443"))
    assert status_of(c.received()) == 403
    [rec] = h.records
    assert (rec.status, rec.result) == (403, TCP_DENIED)
