"""A filter that changes a request's destination gets it checked again (fwproxy.destination).

Filters run after the built-in ``acl`` filter here (the harness's order), so every change below
happens after the access rules allowed the original destination: the proxy must resolve the new
destination where needed and apply the rules and the SSRF guard again, never connect around
them, and never ignore the change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail
from zope.interface import implementer

from fwproxy.interfaces import IConnectFilter, IRequestFilter
from fwproxy.message import Request
from fwproxy.record import TCP_DENIED
from fwproxy.testing import BASE_CONFIG, ORIGIN_IP, OTHER_IP, FakeResolver, Harness, get, status_of

GUARDED = """
[acl.localhost]
src = ["127.0.0.0/8"]
[acl.ssl_ports]
port = [443]
[acl.connect]
method = ["CONNECT"]
[acl.blocked]
dstdomain = ["blocked.test"]
[access]
rules = ["deny to_linklocal", "deny blocked", "deny connect !ssl_ports", "allow localhost",
         "deny all"]
"""


@implementer(IRequestFilter, IConnectFilter)
class Mover:
    """Moves every request as ``move`` says (after the acl filter has allowed it)."""

    def __init__(self, move: Callable[[Request], Any]) -> None:
        self.move = move
        self.seen: list[tuple[str, int, Any]] = []

    def requestReceived(self, request: Request) -> Any:
        self.seen.append(request.destination)
        return self.move(request)

    connectReceived = requestReceived


def _host(name: str) -> Callable[[Request], None]:
    def move(r: Request) -> None:
        r.host = name

    return move


def test_moving_to_a_denied_host_is_denied(make: Callable[..., Harness]) -> None:
    h = make(GUARDED, filters=[Mover(_host("blocked.test"))])
    c = h.connect()
    c.send(get())
    assert status_of(c.received()) == 403
    assert h.attempts == []
    [rec] = h.records
    assert rec.result == TCP_DENIED


def test_moving_to_an_allowed_host_resolves_and_connects_there(
    make: Callable[..., Harness],
) -> None:
    resolver = FakeResolver()
    mover = Mover(_host("other.test"))
    h = make(GUARDED, filters=[mover], resolver=resolver)
    c = h.connect()
    c.send(get())
    # the acl filter resolved example.com (dst rules); the move drops those addresses
    assert mover.seen == [("example.com", 80, (ORIGIN_IP,))]
    assert resolver.calls == ["example.com", "other.test"]
    [(host, port, *_)] = h.attempts
    assert (host, port) == (OTHER_IP, 80)
    up = h.accept()
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert status_of(c.received()) == 200


def test_addresses_set_by_a_later_filter_are_checked(make: Callable[..., Harness]) -> None:
    def to_metadata(r: Request) -> None:
        r.addresses = ["169.254.169.254"]

    h = make(GUARDED, filters=[Mover(to_metadata)])
    c = h.connect()
    c.send(get())
    assert status_of(c.received()) == 403
    assert h.attempts == []


def test_addresses_narrowed_by_a_later_filter_are_used(make: Callable[..., Harness]) -> None:
    resolver = FakeResolver({"two.test": [ORIGIN_IP, OTHER_IP]})

    def narrow(r: Request) -> None:
        r.addresses = [OTHER_IP]

    h = make(GUARDED, filters=[Mover(narrow)], resolver=resolver)
    c = h.connect()
    c.send(get(b"http://two.test/"))
    [(host, *_)] = h.attempts
    assert host == OTHER_IP


def test_moving_a_connect_to_another_port_is_checked(make: Callable[..., Harness]) -> None:
    def to_ssh(r: Request) -> None:
        r.port = 22

    h = make(GUARDED, filters=[Mover(to_ssh)])
    c = h.connect()
    c.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert status_of(c.received()) == 403
    assert h.attempts == []


def test_moving_a_connect_to_an_allowed_host_tunnels_there(make: Callable[..., Harness]) -> None:
    h = make(GUARDED, filters=[Mover(_host("other.test"))])
    c = h.connect()
    c.send(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
    [(host, port, *_)] = h.attempts
    assert (host, port) == (OTHER_IP, 443)


def test_an_unchanged_destination_is_checked_once(make: Callable[..., Harness]) -> None:
    resolver = FakeResolver()
    h = make(GUARDED, filters=[Mover(lambda r: None)], resolver=resolver)
    c = h.connect()
    c.send(get())
    assert resolver.calls == ["example.com"]
    assert len(h.attempts) == 1


def test_without_dst_rules_a_move_is_still_checked(make: Callable[..., Harness]) -> None:
    # BASE_CONFIG has no dst rule: the first check never resolved; the moved request is
    # checked (CONNECT to a port the rules deny) and resolved for the new host
    def to_80(r: Request) -> None:
        r.port = 80

    h = make(BASE_CONFIG, filters=[Mover(to_80)])
    c = h.connect()
    c.send(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
    assert status_of(c.received()) == 403


def test_a_recheck_that_waits_on_the_resolver(make: Callable[..., Harness]) -> None:
    resolver = FakeResolver()
    resolver.deferred.add("other.test")
    h = make(GUARDED, filters=[Mover(_host("other.test"))], resolver=resolver)
    c = h.connect()
    c.send(get())
    assert h.attempts == [] and c.paused
    [(name, d)] = resolver.pending
    d.callback(["169.254.169.254"])  # the new name points at the metadata service
    assert status_of(c.received()) == 403
    assert h.attempts == []


# -- a failing filter is named ------------------------------------------------------------


@implementer(IRequestFilter)
class Broken:
    def __init__(self, deferred: bool) -> None:
        self.deferred = deferred

    def requestReceived(self, request: Request) -> Deferred[Any] | None:
        if self.deferred:
            return fail(RuntimeError("broken filter (deferred)"))
        raise RuntimeError("broken filter")


@pytest.mark.parametrize("deferred", [False, True])
def test_a_filter_that_raises_gets_500(make: Callable[..., Harness], deferred: bool) -> None:
    h = make(BASE_CONFIG, filters=[Broken(deferred)])
    c = h.connect()
    c.send(get())
    assert status_of(c.received()) == 500 and c.closed
    [failure] = h.take_failures()
    assert failure.check(RuntimeError)
    [rec] = h.records
    assert rec.status == 500


def test_the_log_line_names_the_filter_and_hook(make: Callable[..., Harness]) -> None:
    from twisted.logger import formatEvent, globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        h = make(BASE_CONFIG, filters=[Broken(False)])
        c = h.connect()
        c.send(get())
    finally:
        globalLogPublisher.removeObserver(events.append)
    h.take_failures()
    [text] = [formatEvent(e) for e in events if e.get("log_failure") is not None]
    assert "test_destination.Broken" in text and "requestReceived" in text
