"""Parent proxies and ``[routing]`` (fwproxy.routing, fwproxy.parents), in memory: which way a
request goes, relayed requests and CONNECTs through a parent, fail-over, marking down, the
``IUpstreamSelector`` interface, and credentials that never show.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.certs import CA, MemoryTLSServer
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from zope.interface import implementer
from zope.interface.verify import verifyObject

from fwproxy.acl import CLIENT_CERT_NOTE, AclError, ClientCert, make_acl, predefined
from fwproxy.config import ConfigError, loads
from fwproxy.interfaces import IUpstreamSelector
from fwproxy.logformat import FORMATS
from fwproxy.message import Request
from fwproxy.parents import (
    ConnectReply,
    Parent,
    ParentError,
    ParentHealth,
    absolute_target,
    connect_head,
    read_credentials,
)
from fwproxy.record import TCP_MISS, TCP_TUNNEL
from fwproxy.routing import DIRECT, Route, RoutingRules, parse_routing_rule
from fwproxy.testing import (
    BASE_CONFIG,
    OK5,
    ORIGIN_IP,
    FakeResolver,
    Harness,
    get,
    split_response,
    status_of,
)

CORP_IP, BACKUP_IP = "10.1.0.1", "10.1.0.2"
SECRET = "s3cr3t-Pa55"
CREDENTIALS = b"Basic " + base64.b64encode(f"fwproxy:{SECRET}".encode())

PARENTS = f"""
[parents.corp]
address = "{CORP_IP}:3128"
credentials_env = "FWPROXY_TEST_CORP"
max_failures = 2
retry_after = 60

[parents.backup]
address = "backup.test:8080"

[acl.internal]
dstdomain = [".internal.test"]

[routing]
rules = ["direct internal", "parent corp,backup all"]
"""


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FWPROXY_TEST_CORP", f"fwproxy:{SECRET}")


@pytest.fixture
def resolver() -> FakeResolver:
    return FakeResolver(
        {"backup.test": [BACKUP_IP], "proxy.test": [CORP_IP], "x.internal.test": ["10.2.0.9"]}
    )


@pytest.fixture
def hp(make: Callable[..., Harness], resolver: FakeResolver) -> Harness:
    """A harness with the parents ``corp`` (then ``backup``) for everything but internal names."""
    return make(BASE_CONFIG + PARENTS, resolver=resolver)


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """Every line the proxy logs during the test."""
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


# -- relayed requests through a parent ---------------------------------------------------------


def test_relayed_request_goes_to_the_parent_in_absolute_form(
    hp: Harness, resolver: FakeResolver
) -> None:
    c = hp.connect()
    c.send(get(b"http://example.com/a?b", b"Proxy-Authorization: Basic Y2xpZW50OnB3\r\n"))
    [(host, port, *_)] = hp.attempts
    assert (host, port) == (CORP_IP, 3128)
    up = hp.accept()
    assert up.take() == (
        b"GET http://example.com/a?b HTTP/1.1\r\nHost: example.com\r\n"
        b"Proxy-Authorization: " + CREDENTIALS + b"\r\n\r\n"
    )  # the parent's credentials, never the client's
    assert "example.com" not in resolver.calls  # the parent resolves it, not this proxy
    up.send(OK5)
    assert c.take() == OK5
    [rec] = hp.records
    assert (rec.status, rec.result, rec.upstream) == (200, TCP_MISS, f"{CORP_IP}:3128")
    assert rec.hierarchy == f"FIRSTUP_PARENT/{CORP_IP}"
    assert f" - FIRSTUP_PARENT/{CORP_IP} " in FORMATS["squid"](rec)
    assert json.loads(FORMATS["json"](rec))["hierarchy"] == f"FIRSTUP_PARENT/{CORP_IP}"


def test_https_url_goes_to_the_parent_as_it_is(hp: Harness) -> None:
    c = hp.connect()
    c.send(get(b"https://example.com:8443/x"))
    up = hp.accept()
    assert up.take().startswith(b"GET https://example.com:8443/x HTTP/1.1\r\n")
    up.send(OK5)
    assert c.take() == OK5


def test_direct_rule_and_no_match_go_direct(
    make: Callable[..., Harness], resolver: FakeResolver
) -> None:
    h = make(BASE_CONFIG + PARENTS, resolver=resolver)
    c = h.connect()
    c.send(get(b"http://x.internal.test/"))
    assert h.attempts[-1][:2] == ("10.2.0.9", 80)
    up = h.accept()
    assert up.take().startswith(b"GET / HTTP/1.1\r\n")  # origin form: no parent
    up.send(OK5)
    assert h.records[-1].hierarchy == "" and " HIER_DIRECT/10.2.0.9 " in FORMATS["squid"](
        h.records[-1]
    )
    nothing = PARENTS.replace('"parent corp,backup all"', '"parent corp internal"')
    h2 = make(BASE_CONFIG + nothing.replace('"direct internal", ', ""), resolver=resolver)
    c = h2.connect()
    c.send(get())
    assert h2.attempts[-1][:2] == (ORIGIN_IP, 80)


def test_parent_connections_are_pooled_for_any_origin(hp: Harness) -> None:
    c = hp.connect()
    c.send(get(b"http://example.com/1"))
    up = hp.accept()
    up.take()
    up.send(OK5)
    c.send(get(b"http://other.test/2"))
    assert len(hp.attempts) == 1
    assert up.take().startswith(b"GET http://other.test/2 HTTP/1.1\r\nHost: other.test\r\n")
    assert hp.factory.pool.idle_count(("proxy", CORP_IP, 3128)) == 0  # busy with the second


# -- fail-over and marking down ---------------------------------------------------------------


def test_a_refusing_parent_fails_over_to_the_next(hp: Harness, logged: list[str]) -> None:
    c = hp.connect()
    c.send(get())
    hp.refuse()
    assert hp.attempts[-1][:2] == (BACKUP_IP, 8080)
    up = hp.accept()
    assert up.take().startswith(b"GET http://example.com/ HTTP/1.1\r\n")
    up.send(OK5)
    assert c.take() == OK5
    assert hp.records[-1].hierarchy == "FIRSTUP_PARENT/backup.test"
    assert any(f"parent corp ({CORP_IP}:3128) failed" in line for line in logged)


def test_a_parent_that_keeps_failing_is_marked_down_then_retried(
    hp: Harness, logged: list[str]
) -> None:
    health = hp.factory.routes.health
    corp = hp.config.parents["corp"]
    for _ in range(2):  # max_failures = 2
        c = hp.connect()
        c.send(get())
        hp.refuse(len(hp.attempts) - 1)
        hp.accept().send(OK5)
    assert not health.is_up(corp)
    assert any("marked down for 60 s after 2 failure(s)" in line for line in logged)
    n = len(hp.attempts)
    c = hp.connect()
    c.send(get())
    assert len(hp.attempts) == n + 1 and hp.attempts[-1][:2] == (BACKUP_IP, 8080)
    hp.accept().send(OK5)
    hp.clock.advance(60)  # retry_after
    c = hp.connect()
    c.send(get())
    assert hp.attempts[-1][:2] == (CORP_IP, 3128)  # tried again
    up = hp.accept()
    up.send(OK5)
    assert status_of(c.received()) == 200
    assert health.is_up(corp) and health.down_until(corp) is None


def test_a_parent_back_from_down_that_fails_again_is_down_at_once(hp: Harness) -> None:
    health = hp.factory.routes.health
    corp = hp.config.parents["corp"]
    health.failed(corp, "x")
    health.failed(corp, "x")
    hp.clock.advance(60)
    assert health.is_up(corp)
    health.failed(corp, "still refused")
    assert not health.is_up(corp)


def test_every_parent_failing_is_502_naming_each_never_direct(hp: Harness) -> None:
    c = hp.connect()
    c.send(get())
    hp.refuse()
    hp.refuse()
    status, _, body = split_response(c.received())
    assert b" 502 " in status
    assert (
        body
        == (
            f"fwproxy: no parent proxy could be used: corp ({CORP_IP}:3128): connection refused; "
            "backup (backup.test:8080): connection refused\n"
        ).encode()
    )
    assert [a[:2] for a in hp.attempts] == [(CORP_IP, 3128), (BACKUP_IP, 8080)]
    assert hp.records[-1].hierarchy == ""


def test_a_parent_timing_out_fails_over_with_its_own_budget(hp: Harness) -> None:
    c = hp.connect()
    c.send(get())
    hp.clock.advance(hp.config.timeouts.connect)
    assert hp.clock.connectors[0].stoppedConnecting
    assert hp.attempts[-1][:2] == (BACKUP_IP, 8080)
    hp.clock.advance(hp.config.timeouts.connect - 1)
    assert c.received() == b""  # the second parent has a whole budget of its own
    hp.clock.advance(1)
    status, _, body = split_response(c.received())
    assert b" 504 " in status and body.endswith(b"backup (backup.test:8080): timed out\n")


def test_all_parents_marked_down_is_502_without_trying(hp: Harness) -> None:
    health = hp.factory.routes.health
    for name in ("corp", "backup"):
        for _ in range(3):
            health.failed(hp.config.parents[name], "x")
    c = hp.connect()
    c.send(get())
    assert hp.attempts == []
    assert b"corp (10.1.0.1:3128): marked down; backup (backup.test:8080): marked down" in (
        c.received()
    )


def test_an_unresolvable_parent_counts_as_failed(
    make: Callable[..., Harness], resolver: FakeResolver
) -> None:
    h = make(BASE_CONFIG + PARENTS.replace("backup.test", "gone.test"), resolver=resolver)
    c = h.connect()
    c.send(get())
    h.refuse()
    assert b"backup (gone.test:8080): cannot resolve gone.test" in c.received()


def test_a_parent_that_is_this_proxy_is_not_followed(
    make: Callable[..., Harness], resolver: FakeResolver
) -> None:
    h = make(BASE_CONFIG + PARENTS.replace(f"{CORP_IP}:3128", "127.0.0.1:3128"), resolver=resolver)
    c = h.connect()
    c.send(get())
    assert h.attempts == []
    assert b"parent corp (127.0.0.1:3128) is this proxy" in c.received()


# -- CONNECT through a parent ------------------------------------------------------------------


def test_connect_is_a_connect_to_the_parent_then_the_splice(hp: Harness) -> None:
    c = hp.connect()
    c.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert hp.attempts[-1][:2] == (CORP_IP, 3128)
    up = hp.accept()
    assert up.take() == (
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"
        b"Proxy-Authorization: " + CREDENTIALS + b"\r\n\r\n"
    )
    assert c.received() == b""  # no 200 before the parent's
    up.send(b"HTTP/1.1 200 Connection established\r\nVia: corp\r\n\r\nserver-first")
    assert c.take() == b"HTTP/1.1 200 Connection established\r\n\r\nserver-first"
    c.send(b"\x16\x03\x01 hello")
    assert up.take() == b"\x16\x03\x01 hello"
    up.send(b"back")
    assert c.take() == b"back"
    up.lost()
    [rec] = hp.records
    assert (rec.status, rec.result, rec.hierarchy) == (200, TCP_TUNNEL, f"FIRSTUP_PARENT/{CORP_IP}")


def test_connect_answer_may_arrive_in_pieces(hp: Harness) -> None:
    c = hp.connect()
    c.send(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
    up = hp.accept()
    for piece in (b"HTTP/1.0 200 OK\r", b"\n", b"\r\n"):
        assert c.received() == b""
        up.send(piece)
    assert status_of(c.received()) == 200


@pytest.mark.parametrize(
    "answer, status", [(b"HTTP/1.1 403 Forbidden", 502), (b"HTTP/1.1 503 Unavailable", 503)]
)
def test_connect_refused_by_the_parent(hp: Harness, answer: bytes, status: int) -> None:
    c = hp.connect()
    c.send(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
    up = hp.accept()
    up.send(answer + b"\r\nContent-Length: 0\r\n\r\n")
    assert up.closed
    head, _, body = split_response(c.received())
    assert status_of(c.received()) == status and c.closed
    assert body.startswith(f"fwproxy: parent corp ({CORP_IP}:3128) answered the CONNECT".encode())
    assert len(hp.attempts) == 1  # its answer stands: no fail-over
    assert hp.factory.routes.health.is_up(hp.config.parents["corp"])
    assert hp.records[-1].hierarchy == f"FIRSTUP_PARENT/{CORP_IP}"


def test_a_parent_closing_before_answering_connect_fails_over(hp: Harness) -> None:
    c = hp.connect()
    c.send(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
    hp.accept().lost()
    up = hp.accept()
    assert up.take().startswith(b"CONNECT example.com:443 HTTP/1.1\r\n")
    up.send(b"HTTP/1.1 200 OK\r\n\r\n")
    assert status_of(c.received()) == 200


def test_a_parent_that_never_answers_connect_is_dropped_at_the_timeout(hp: Harness) -> None:
    c = hp.connect()
    c.send(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
    silent = hp.accept()
    assert silent.take().startswith(b"CONNECT ")
    hp.clock.advance(hp.config.timeouts.connect)
    assert silent.closed  # the half-made tunnel is dropped, not left open
    silent.lost(ierror.ConnectionAborted)
    assert hp.attempts[-1][:2] == (BACKUP_IP, 8080)
    hp.accept().send(b"HTTP/1.1 200 OK\r\n\r\n")
    assert status_of(c.received()) == 200


def test_garbage_for_an_answer_to_connect_fails_over(hp: Harness) -> None:
    c = hp.connect()
    c.send(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
    first = hp.accept()
    first.send(b"SSH-2.0-OpenSSH\r\n")
    assert first.closed
    first.lost()
    assert hp.attempts[-1][:2] == (BACKUP_IP, 8080)


# -- a parent over TLS ---------------------------------------------------------------------------


@pytest.fixture
def tls_parent(make: Callable[..., Harness], resolver: FakeResolver, tmp_path: Path):
    ca = CA("parent CA")
    config = PARENTS.replace(
        f'address = "{CORP_IP}:3128"', 'address = "proxy.test:3129"\ntls = true'
    )
    h = make(
        BASE_CONFIG + config + f'\n[tls]\nca_file = "{ca.write(tmp_path)}"\n', resolver=resolver
    )
    return h, ca


def test_a_tls_parent_is_verified_and_relays(tls_parent: tuple[Harness, CA]) -> None:
    h, ca = tls_parent
    c = h.connect()
    c.send(get())
    up = h.accept()
    parent = MemoryTLSServer(up, ca.issue("proxy.test"), h.clock)
    assert parent.server_name == b"proxy.test"
    assert parent.received.startswith(b"GET http://example.com/ HTTP/1.1\r\n")
    assert CREDENTIALS in parent.received
    parent.send(OK5)
    assert c.take() == OK5
    assert h.records[-1].hierarchy == "FIRSTUP_PARENT/proxy.test"


def test_a_tls_parent_for_connect(tls_parent: tuple[Harness, CA]) -> None:
    h, ca = tls_parent
    c = h.connect()
    c.send(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
    parent = MemoryTLSServer(h.accept(), ca.issue("proxy.test"), h.clock)
    assert parent.received.startswith(b"CONNECT example.com:443 HTTP/1.1\r\n")
    parent.send(b"HTTP/1.1 200 OK\r\n\r\n")
    assert c.take() == b"HTTP/1.1 200 Connection established\r\n\r\n"
    c.send(b"inner")
    parent.pump()
    assert parent.received.endswith(b"\r\n\r\ninner")


def test_a_tls_parent_that_fails_verification_fails_over(tls_parent: tuple[Harness, CA]) -> None:
    h, ca = tls_parent
    c = h.connect()
    c.send(get())
    MemoryTLSServer(h.accept(), ca.issue("impostor.test"), h.clock)
    assert h.attempts[-1][:2] == (BACKUP_IP, 8080)
    h.refuse()
    body = split_response(c.received())[2]
    assert b"corp (proxy.test:3129): TLS failed: certificate verify failed: hostname mismatch" in (
        body
    )


# -- credentials never show ---------------------------------------------------------------------


def test_credentials_are_never_logged(hp: Harness, logged: list[str]) -> None:
    c = hp.connect()
    c.send(get())
    hp.accept().send(OK5)
    c.send(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
    hp.accept().send(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
    c2 = hp.connect()
    c2.send(b"CONNECT other.test:443 HTTP/1.1\r\n\r\n")  # a tunnel: no pooled connection
    hp.refuse()
    hp.refuse()
    assert status_of(c2.received()) == 502
    token = CREDENTIALS.split()[1].decode()
    texts = [c.received().decode("latin-1"), c2.received().decode("latin-1"), *logged]
    for rec in hp.records:
        texts += [repr(rec), *(fmt(rec) for fmt in FORMATS.values())]
    texts += [repr(hp.config), repr(hp.config.parents), str(hp.config.parents["corp"])]
    assert len(hp.records) == 3 and logged
    for text in texts:
        assert SECRET not in text and token not in text


# -- IUpstreamSelector ---------------------------------------------------------------------------


@implementer(IUpstreamSelector)
class ByUser:
    """Routes requests with ``X-Route: special`` through its own parent."""

    def __init__(self, parent: Parent, later: bool = False) -> None:
        self.parent = parent
        self.later = later
        self.seen: list[Request] = []

    def selectUpstream(self, request: Request) -> Any:
        self.seen.append(request)
        route = Route((self.parent,)) if request.headers.get("X-Route") == b"special" else None
        return succeed(route) if self.later else route


@pytest.mark.parametrize("later", [False, True])
def test_a_selector_chooses_before_the_routing_rules(
    make: Callable[..., Harness], resolver: FakeResolver, later: bool
) -> None:
    selector = ByUser(Parent("special", "10.3.0.1", 3128), later)
    h = make(BASE_CONFIG + PARENTS, filters=[selector], resolver=resolver)
    c = h.connect()
    c.send(get(headers=b"X-Route: special\r\n"))
    assert h.attempts[-1][:2] == ("10.3.0.1", 3128)
    up = h.accept()
    assert up.take().startswith(b"GET http://example.com/ HTTP/1.1\r\n")
    up.send(OK5)
    c.send(get())  # no opinion: the [routing] rules decide
    assert h.attempts[-1][:2] == (CORP_IP, 3128)
    assert len(selector.seen) == 2


def test_a_selector_can_send_a_request_direct(
    make: Callable[..., Harness], resolver: FakeResolver
) -> None:
    @implementer(IUpstreamSelector)
    class Direct:
        def selectUpstream(self, request: Request) -> Route:
            return DIRECT

    h = make(BASE_CONFIG + PARENTS, filters=[Direct()], resolver=resolver)
    c = h.connect()
    c.send(get())
    assert h.attempts[-1][:2] == (ORIGIN_IP, 80)


@pytest.mark.parametrize("answer", ["raise", "garbage", "deferred-failure"])
def test_a_failing_selector_is_500(
    make: Callable[..., Harness], resolver: FakeResolver, answer: str
) -> None:
    @implementer(IUpstreamSelector)
    class Broken:
        def selectUpstream(self, request: Request) -> Any:
            if answer == "raise":
                raise RuntimeError("bug in the selector")
            if answer == "garbage":
                return "corp"
            d: Deferred[None] = Deferred()
            d.errback(RuntimeError("bug later"))
            return d

    h = make(BASE_CONFIG, filters=[Broken()], resolver=resolver)
    c = h.connect()
    c.send(get())
    assert status_of(c.received()) == 500 and h.attempts == []
    assert len(h.take_failures()) == 1


def test_routing_rules_provide_the_interface() -> None:
    rules = RoutingRules([], MemoryReactorClock(), FakeResolver())
    assert verifyObject(IUpstreamSelector, rules)
    assert rules.selectUpstream(Request("GET", "http://x/", "x", 80)) is None


def test_routing_rules_with_dst_acls_resolve_when_reached() -> None:
    resolver = FakeResolver({"near.test": ["10.0.0.5"], "far.test": ["203.0.113.9"]})
    corp = Parent("corp", "10.1.0.1", 3128)
    config = loads(
        BASE_CONFIG + '[parents.corp]\naddress = "10.1.0.1:3128"\n'
        '[routing]\nrules = ["direct to_private", "parent corp all"]\n'
    )
    rules = RoutingRules(config.routing, MemoryReactorClock(), resolver)
    near = Request("GET", "http://near.test/", "near.test", 80)
    assert rules.selectUpstream(near) == DIRECT
    assert near.addresses == ["10.0.0.5"]
    assert rules.selectUpstream(Request("GET", "http://far.test/", "far.test", 80)) == Route(
        (corp,)
    )
    slow = Request("GET", "http://slow.test/", "slow.test", 80)
    d = rules.selectUpstream(slow)
    assert isinstance(d, Deferred) and not d.called
    resolver.pending[-1][1].callback(["192.168.1.1"])
    assert d.result == DIRECT


# -- sans-IO parts ------------------------------------------------------------------------------


def test_connect_head_and_absolute_targets() -> None:
    assert (
        connect_head("[::1]:443", None) == b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n"
    )
    assert absolute_target("http", "example.com", 80, b"/") == b"http://example.com/"
    assert absolute_target("https", "::1", 8443, b"/x") == b"https://[::1]:8443/x"
    assert absolute_target("https", "example.com", 443, b"/?q") == b"https://example.com/?q"


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"SSH-2.0-x\r\n", "not HTTP"),
        (b"HTTP/1.1 2000 x\r\n\r\n", "not HTTP"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20000, "no end"),
    ],
)
def test_connect_reply_refuses_what_is_not_an_answer(data: bytes, problem: str) -> None:
    with pytest.raises(ParentError) as e:
        ConnectReply().feed(data)
    assert problem in str(e.value)


def test_health_is_per_parent() -> None:
    clock = MemoryReactorClock()
    health = ParentHealth(clock)
    a, b = Parent("a", "10.0.0.1", 1, max_failures=1, retry_after=5), Parent("b", "10.0.0.1", 1)
    health.failed(a, "x")
    assert not health.is_up(a) and health.is_up(b)
    assert health.down_until(a) == 5
    clock.advance(5)
    assert health.is_up(a)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("direct", "names no ACL"),
        ("parent", "names no parent"),
        ("parent nope all", "needs [parents.nope], which is not defined"),
        ("parent corp,nope all", "needs [parents.nope]"),
        ("via corp all", 'must start with "parent" or "direct"'),
        ("parent corp nothing", "uses ACL 'nothing', which is not defined"),
    ],
)
def test_bad_routing_rules(text: str, problem: str) -> None:
    corp = {"corp": Parent("corp", "10.0.0.1", 1)}
    with pytest.raises(AclError) as e:
        parse_routing_rule(text, predefined(), corp)
    assert str(e.value).startswith("routing.rules: ") and problem in str(e.value)


# -- configuration -------------------------------------------------------------------------------


def test_parents_configuration(tmp_path: Path) -> None:
    (tmp_path / "corp.cred").write_text("fwproxy:from-a-file\n")
    config = loads(
        """
[parents.corp]
address = "Proxy.Example:3128"
tls = true
credentials_file = "corp.cred"
[parents.v6]
address = "[2001:db8::1]:8080"
[routing]
rules = ["parent corp,v6 all"]
""",
        str(tmp_path / "fwproxy.toml"),
    )
    corp, v6 = config.parents["corp"], config.parents["v6"]
    assert (corp.host, corp.port, corp.tls, corp.max_failures, corp.retry_after) == (
        "proxy.example",
        3128,
        True,
        3,
        30.0,
    )
    assert corp.credentials == b"Basic " + base64.b64encode(b"fwproxy:from-a-file")
    assert (v6.host, v6.port, v6.credentials, v6.authority) == (
        "2001:db8::1",
        8080,
        None,
        "[2001:db8::1]:8080",
    )
    assert config.routing[0].route == Route((corp, v6))
    assert "from-a-file" not in repr(config)


@pytest.mark.parametrize(
    "table, problem",
    [
        ('address = "proxy"', "parents.p.address: expected \"host:port\", got 'proxy'"),
        ('address = "proxy:0"', "parents.p.address: expected"),
        ("address = 3128", 'parents.p.address: expected "host:port", got 3128'),
        ("tls = true", 'parents.p: needs address = "host:port"'),
        ('address = "p:1"\ntls = "yes"', "parents.p.tls: expected true or false, got 'yes'"),
        ('address = "p:1"\nmax_failures = 0', "parents.p.max_failures: must be at least 1, got 0"),
        ('address = "p:1"\nretry_after = -1', "parents.p.retry_after: must be greater than 0"),
        (
            'address = "p:1"\ncredentials_env = "FWPROXY_UNSET_X"',
            "the variable FWPROXY_UNSET_X is not set",
        ),
        (
            'address = "p:1"\ncredentials_file = "missing"',
            "parents.p.credentials_file: cannot read",
        ),
        ('address = "p:1"\ncredentials_file = "bad.cred"', "does not hold one line USER:PASSWORD"),
        ('address = "p:1"\ncredentials_file = "c"\ncredentials_env = "E"', "not both"),
        ('address = "p:1"\nport = 3', "parents.p.port: unknown key"),
    ],
)
def test_bad_parent_tables_are_one_line_each(tmp_path: Path, table: str, problem: str) -> None:
    (tmp_path / "bad.cred").write_text("only-a-secret-no-colon\n")
    (tmp_path / "c").write_text("u:p\n")
    source = str(tmp_path / "f.toml")
    with pytest.raises(ConfigError) as e:
        loads(f'[parents.p]\n{table}\n\n[routing]\nrules = ["parent p all"]\n', source)
    [line] = e.value.problems  # the rule naming the broken parent is not reported again
    assert line.startswith(f"{source}:") and problem in line
    assert "only-a-secret" not in line


def test_read_credentials_from_the_environment() -> None:
    assert read_credentials(None, "V", {"V": "a:b:c"}) == b"Basic " + base64.b64encode(b"a:b:c")
    assert read_credentials(None, None) is None
    with pytest.raises(ParentError) as e:
        read_credentials(None, "V", {"V": "nocolon-secret"})
    assert "nocolon-secret" not in str(e.value)


def test_reload_keeps_the_parents_health(hp: Harness) -> None:
    corp = hp.config.parents["corp"]
    for _ in range(2):
        hp.factory.routes.health.failed(corp, "x")
    hp.factory.reconfigure(hp.config)
    assert not hp.factory.routes.health.is_up(corp)


def test_routing_rules_see_the_client_certificate_not_the_sni() -> None:
    corp = Parent("corp", "10.1.0.1", 3128)
    acls = predefined()
    acls["ci"] = make_acl("ci", "client_cert", [".ci.test"])
    acls["fronted"] = make_acl("fronted", "ssl_sni", ["evil.test"])
    texts = ("parent corp fronted", "parent corp ci")
    rules = RoutingRules(
        [parse_routing_rule(t, acls, {"corp": corp}) for t in texts],
        MemoryReactorClock(),
        FakeResolver(),
    )
    connect = Request("CONNECT", "evil.test:443", "evil.test", 443)
    assert rules.selectUpstream(connect) is None  # no SNI is known when the route is chosen
    connect.notes[CLIENT_CERT_NOTE] = ClientCert("runner1.ci.test", ("runner1.ci.test",))
    assert rules.selectUpstream(connect) == Route((corp,))
