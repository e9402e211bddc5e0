"""Peeked CONNECT tunnels (fwproxy.peek), in memory; the ``ssl_sni`` ACL, ``[tunnel]`` settings
and the ``sni`` log field beside them. Real ClientHellos come from Python's ssl on memory BIOs
(tests/support/tlshello.py); ECH and GREASE ones are crafted."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.tlshello import crafted_hello, real_hello, reframe
from twisted.internet.defer import Deferred
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from zope.interface import implementer

from fwproxy.acl import (
    SNI_POSTPONED,
    AclContext,
    AclError,
    NeedSni,
    SslSniAcl,
    make_acl,
    predefined,
)
from fwproxy.clienthello import ClientHello
from fwproxy.config import ConfigError, TunnelConfig, loads
from fwproxy.interfaces import IConnectFilter, IDestinationCheck
from fwproxy.logformat import as_json, combined, squid
from fwproxy.message import Request, Response
from fwproxy.peek import (
    ACCESS_DENIED_ALERT,
    DENIED_NOTE,
    ECH_NOTE,
    MISMATCH_NOTE,
    HelloPeek,
    Screening,
    screen,
)
from fwproxy.record import TCP_DENIED, TCP_TUNNEL, TransactionRecord
from fwproxy.rules import AccessPolicy, parse_rule
from fwproxy.testing import ORIGIN_IP, Client, FakeResolver, Harness, Upstream, get, status_of
from fwproxy.tunnel import ESTABLISHED

HELLO = real_hello("example.com", ["h2", "http/1.1"])


def config(rules: str = "", acls: str = "", **tunnel: Any) -> str:
    """The harness's configuration, peeking on 443, with ``rules`` (default: local clients to
    443), extra ``[acl.*]`` tables and ``[tunnel]`` keys."""
    tunnel.setdefault("peek_ports", [443])
    keys = "\n".join(f"{k} = {json.dumps(v)}" for k, v in tunnel.items())
    rules = rules or '"deny connect !ssl_ports", "allow localhost", "deny all"'
    return f"""
[acl.localhost]
src = ["127.0.0.0/8"]
[acl.ssl_ports]
port = [443]
[acl.connect]
method = ["CONNECT"]
{acls}
[access]
rules = [{rules}]
[timeouts]
connect = 10
client_hello = 3
tunnel_idle = 50
[tunnel]
{keys}
"""


def connect_head(authority: bytes = b"example.com:443") -> bytes:
    return b"CONNECT " + authority + b" HTTP/1.1\r\nHost: " + authority + b"\r\n\r\n"


def tunnel(h: Harness, authority: bytes = b"example.com:443") -> tuple[Client, Upstream]:
    c = h.connect()
    c.send(connect_head(authority))
    up = h.accept()
    assert c.take() == ESTABLISHED
    return c, up


@pytest.fixture
def p(make: Callable[..., Harness]) -> Harness:
    return make(config())


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    seen: list[str] = []

    def observe(event: LogEvent) -> None:
        if event.get("log_level") is not None and event["log_level"].name == "warn":
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


# -- the peek, in memory ----------------------------------------------------------------------


def test_the_hello_is_held_then_passed_on_and_the_tunnel_splices(p: Harness) -> None:
    c, up = tunnel(p)
    assert up.paused  # the origin waits for the verdict
    c.send(HELLO[:100])
    assert up.received() == b""
    c.send(HELLO[100:])
    assert up.take() == HELLO
    assert not up.paused
    up.send(b"\x16\x03\x03server hello")
    assert c.take() == b"\x16\x03\x03server hello"
    c.send(b"\x17\x03\x03app data")
    assert up.take() == b"\x17\x03\x03app data"
    c.shutdown_write()
    up.shutdown_write()
    [rec] = p.records
    assert (rec.result, rec.status, rec.sni) == (TCP_TUNNEL, 200, "example.com")
    tunneled = len(HELLO) + len(b"\x17\x03\x03app data")
    assert tunneled <= rec.bytes_in <= tunneled + len(connect_head())  # (the head: about)


def test_a_hello_split_over_records_and_behind_the_connect_head(p: Harness) -> None:
    hello = reframe(HELLO, [50, 7, 300])
    c = p.connect()
    c.send(connect_head() + hello[:30])
    c.send(hello[30:90])
    up = p.accept()
    assert c.take() == ESTABLISHED
    assert up.received() == b""
    c.send(hello[90:] + b"\x14\x03\x03\x00\x01\x01")
    assert up.take() == hello + b"\x14\x03\x03\x00\x01\x01"


def test_an_allowed_tunnel_lets_go_of_the_hello(p: Harness) -> None:
    c, up = tunnel(p)
    peek = c.proto.raw
    assert isinstance(peek, HelloPeek)
    c.send(HELLO)
    assert peek.state == "open" and peek.held == 0
    assert peek._parser is None and peek._held is None


def test_domain_fronting_is_refused(p: Harness) -> None:
    c, up = tunnel(p)
    c.send(real_hello("fronted.test"))
    assert c.take() == ACCESS_DENIED_ALERT
    assert c.closed and up.closed
    assert up.received() == b""  # not one byte of the hello reached the origin
    [rec] = p.records
    assert (rec.result, rec.status, rec.sni) == (TCP_DENIED, 403, "fronted.test")
    assert "'fronted.test' is not the CONNECT host 'example.com'" in rec.notes[DENIED_NOTE]


def test_the_host_is_compared_without_its_trailing_dot(make: Callable[..., Harness]) -> None:
    h = make(config(), resolver=FakeResolver({"example.com.": [ORIGIN_IP]}))
    c, up = tunnel(h, b"EXAMPLE.com.:443")
    c.send(HELLO)
    assert up.received() == HELLO and not c.closed


def test_a_mismatch_logged(make: Callable[..., Harness], warnings: list[str]) -> None:
    h = make(config(sni_mismatch="log"))
    c, up = tunnel(h)
    hello = real_hello("fronted.test")
    c.send(hello)
    assert up.received() == hello and not c.closed
    [line] = warnings
    assert "127.0.0.1" in line and "'fronted.test' is not the CONNECT host" in line
    c.lost()
    assert h.records[0].notes[MISMATCH_NOTE] is True
    assert h.records[0].sni == "fronted.test"


def test_a_mismatch_allowed(make: Callable[..., Harness], warnings: list[str]) -> None:
    h = make(config(sni_mismatch="allow"))
    c, up = tunnel(h)
    hello = real_hello("fronted.test")
    c.send(hello)
    assert up.received() == hello
    assert warnings == []


def test_an_ip_literal_connect_has_no_name_to_mismatch(p: Harness) -> None:
    c, up = tunnel(p, ORIGIN_IP.encode() + b":443")
    hello = real_hello("anything.test")
    c.send(hello)
    assert up.received() == hello


def test_a_hello_without_a_server_name(p: Harness) -> None:
    c, up = tunnel(p)
    hello = real_hello(None)
    c.send(hello)
    assert up.received() == hello
    c.lost()
    assert p.records[0].sni == ""


def test_ech_is_allowed_by_default_and_is_no_mismatch(p: Harness) -> None:
    c, up = tunnel(p)
    hello = crafted_hello("public.provider.test", [b"h2"], ech=True, grease=True)
    c.send(hello)
    assert up.received() == hello
    c.lost()
    assert p.records[0].notes[ECH_NOTE] is True


def test_ech_denied(make: Callable[..., Harness]) -> None:
    h = make(config(ech="deny"))
    c, up = tunnel(h)
    c.send(crafted_hello("example.com", ech=True))
    assert c.take() == ACCESS_DENIED_ALERT and c.closed and up.received() == b""
    assert "Encrypted Client Hello" in h.records[0].notes[DENIED_NOTE]
    c2, up2 = tunnel(h)
    c2.send(crafted_hello("example.com", grease=True))  # GREASE alone is not ECH
    assert up2.received() != b""


def test_not_tls_is_refused_without_an_alert(p: Harness) -> None:
    c, up = tunnel(p)
    c.send(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert c.take() == b"" and c.closed and up.closed
    assert up.received() == b""
    [rec] = p.records
    assert (rec.result, rec.status, rec.sni) == (TCP_DENIED, 403, None)
    assert rec.notes[DENIED_NOTE].startswith("not TLS")
    sent = len(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert sent <= rec.bytes_in <= sent + len(connect_head())


def test_a_malformed_hello_is_refused_with_an_alert(p: Harness) -> None:
    c, up = tunnel(p)
    c.send(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00")
    assert c.take() == ACCESS_DENIED_ALERT and c.closed
    assert p.records[0].notes[DENIED_NOTE].startswith("malformed ClientHello")


def test_no_hello_in_time(p: Harness) -> None:
    c, up = tunnel(p)
    p.clock.advance(2.9)
    assert not c.closed
    p.clock.advance(0.1)
    assert c.closed and up.closed and c.take() == b""
    [rec] = p.records
    assert rec.result == TCP_DENIED and "timeouts.client_hello" in rec.notes[DENIED_NOTE]


def test_half_a_hello_in_time(p: Harness) -> None:
    c, up = tunnel(p)
    c.send(HELLO[:20])
    p.clock.advance(3)
    assert c.take() == ACCESS_DENIED_ALERT and c.closed
    assert p.records[0].result == TCP_DENIED


def test_after_the_hello_the_idle_timeout_is_the_tunnels(p: Harness) -> None:
    c, up = tunnel(p)
    p.clock.advance(2)
    c.send(HELLO)
    p.clock.advance(10)
    assert not c.closed
    p.clock.advance(39.9)
    assert not c.closed
    p.clock.advance(0.1)
    assert c.closed and p.records[0].result == TCP_TUNNEL


def test_the_client_closing_before_a_whole_hello(p: Harness) -> None:
    c, up = tunnel(p)
    c.send(HELLO[:10])
    c.shutdown_write()
    assert c.closed and up.closed
    assert p.records[0].result == TCP_DENIED


def test_the_client_closing_without_a_byte_is_an_unused_tunnel(p: Harness) -> None:
    c, up = tunnel(p)
    c.shutdown_write()
    assert c.closed and up.closed
    [rec] = p.records
    assert (rec.result, rec.status, rec.sni) == (TCP_TUNNEL, 200, None)


def test_the_client_or_the_origin_going_during_the_peek(p: Harness) -> None:
    c, up = tunnel(p)
    c.send(HELLO[:10])
    c.lost()
    assert up.closed
    c2, up2 = tunnel(p)
    up2.lost()
    assert c2.closed
    c2.send(HELLO)  # late bytes go nowhere
    assert up2.received() == b""
    assert [r.result for r in p.records] == [TCP_TUNNEL, TCP_TUNNEL]


def test_ports_not_peeked(make: Callable[..., Harness]) -> None:
    h = make(config(peek_ports=[8443]))
    c, up = tunnel(h)
    c.send(b"not tls at all")
    assert up.received() == b"not tls at all"
    c.lost()
    assert h.records[0].sni is None


# -- ssl_sni rules: postponed to the ClientHello ------------------------------------------------

SNI_ACLS = """
[acl.sni_ok]
ssl_sni = [".allowed.test", "exact.test"]
[acl.origin]
dst = ["93.184.216.34/32"]
"""
SNI_RULES = '"deny connect !ssl_ports", "allow localhost sni_ok", "deny all"'


@pytest.fixture
def s(make: Callable[..., Harness]) -> Harness:
    return make(config(SNI_RULES, SNI_ACLS))


@pytest.mark.parametrize("name", ["www.allowed.test", "allowed.test", "exact.test"])
def test_ssl_sni_allows(s: Harness, name: str) -> None:
    c, up = tunnel(s, ORIGIN_IP.encode() + b":443")  # an IP literal: no mismatch
    hello = real_hello(name)
    c.send(hello)
    assert up.received() == hello
    c.lost()
    assert s.records[0].notes[SNI_POSTPONED] is True
    assert s.records[0].sni == name


@pytest.mark.parametrize("name", ["www.exact.test", "other.test", None])
def test_ssl_sni_denies(s: Harness, name: str | None) -> None:
    c, up = tunnel(s, ORIGIN_IP.encode() + b":443")
    c.send(real_hello(name))
    assert c.take() == ACCESS_DENIED_ALERT and c.closed
    assert up.received() == b""
    [rec] = s.records
    assert (rec.result, rec.status, rec.sni) == (TCP_DENIED, 403, name or "")
    assert "denied by the access rules" in rec.notes[DENIED_NOTE]


def test_ssl_sni_never_matches_a_relayed_request(s: Harness) -> None:
    c = s.connect()
    c.send(get(b"http://www.allowed.test/"))
    assert status_of(c.received()) == 403
    assert s.attempts == []


def test_ssl_sni_on_a_port_not_peeked_is_decided_on_the_connect_line(
    make: Callable[..., Harness],
) -> None:
    h = make(config(SNI_RULES, SNI_ACLS, peek_ports=[8443]))
    c = h.connect()
    c.send(connect_head(b"www.allowed.test:443"))
    assert status_of(c.received()) == 403  # no ClientHello will come: the rule cannot match
    assert h.attempts == []


def test_rules_before_an_ssl_sni_rule_decide_on_the_connect_line(
    make: Callable[..., Harness],
) -> None:
    h = make(config('"deny origin", ' + SNI_RULES, SNI_ACLS))
    c = h.connect()
    c.send(connect_head())
    assert status_of(c.received()) == 403
    assert h.attempts == []


def test_the_rules_are_evaluated_again_on_the_address_connected_to(
    make: Callable[..., Harness],
) -> None:
    rules = '"allow localhost sni_ok", "deny origin", "allow localhost"'
    h = make(config(rules, SNI_ACLS, sni_mismatch="allow"))
    c, up = tunnel(h)  # postponed at the first rule: connected to ORIGIN_IP
    c.send(real_hello("example.com"))  # not sni_ok: then the dst rule denies the address
    assert c.closed and up.received() == b""
    c2, up2 = tunnel(h)
    c2.send(real_hello("a.allowed.test"))
    assert up2.received() != b"" and not c2.closed


@implementer(IConnectFilter)
class Postpone:
    def connectReceived(self, request: Request) -> None:
        request.notes[SNI_POSTPONED] = True


def test_a_postponed_connect_is_peeked_whatever_the_ports(make: Callable[..., Harness]) -> None:
    # a reload between the CONNECT line and the 200 may change peek_ports: the rules that
    # waited for the ClientHello still get it
    h = make(config(peek_ports=[]), filters=[Postpone()])
    c, up = tunnel(h)
    c.send(b"not tls")
    assert c.closed and up.received() == b""
    c2, up2 = tunnel(h)
    c2.send(HELLO)  # the rules again, with the server name: allowed
    assert up2.received() == HELLO


@implementer(IDestinationCheck)
class SlowCheck:
    def __init__(self) -> None:
        self.pending: list[Deferred[Any]] = []

    def checkDestination(self, request: Request) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append(d)
        return d


def test_a_destination_check_that_waits(make: Callable[..., Harness]) -> None:
    check = SlowCheck()
    h = make(config(SNI_RULES, SNI_ACLS), filters=[check])
    c, up = tunnel(h, ORIGIN_IP.encode() + b":443")
    assert check.pending == []  # a destination check runs on the CONNECT line only if moved
    hello = real_hello("www.allowed.test")
    c.send(hello[:-1])
    c.send(hello[-1:])
    assert check.pending and c.paused and up.received() == b""
    c.send(b"more")  # one read may still arrive while paused: held
    c.shutdown_write()
    check.pending.pop().callback(None)
    assert up.received() == hello + b"more"
    assert not c.paused and up.transport.write_closed


@pytest.mark.parametrize("outcome", ["deny", "timeout", "error"])
def test_a_destination_check_that_refuses(make: Callable[..., Harness], outcome: str) -> None:
    check = SlowCheck()
    h = make(config(SNI_RULES, SNI_ACLS), filters=[check])
    c, up = tunnel(h, ORIGIN_IP.encode() + b":443")
    c.send(real_hello("www.allowed.test"))
    d = check.pending.pop()
    if outcome == "deny":
        d.callback(Response.text(403, "no"))
    elif outcome == "timeout":
        h.clock.advance(3)
        assert d.called  # cancelled
    else:
        d.errback(RuntimeError("check broke"))
        [failure] = h.take_failures()
        assert failure.check(RuntimeError) or "check broke" in failure.getTraceback()
    assert c.take() == ACCESS_DENIED_ALERT and c.closed and up.received() == b""
    assert h.records[0].result == TCP_DENIED


@implementer(IDestinationCheck)
class BrokenCheck:
    def checkDestination(self, request: Request) -> Any:
        raise RuntimeError("broken on the hello")


def test_a_destination_check_that_raises_on_the_hello(make: Callable[..., Harness]) -> None:
    check = BrokenCheck()
    h = make(config(SNI_RULES, SNI_ACLS), filters=[check])
    c, up = tunnel(h, ORIGIN_IP.encode() + b":443")
    c.send(real_hello("www.allowed.test"))
    assert c.closed and up.received() == b""
    assert len(h.take_failures()) == 1


# -- sans-IO: screening, the ssl_sni ACL, configuration, log lines ------------------------------

TUNNEL = TunnelConfig()


@pytest.mark.parametrize(
    "hello, host, settings, denied, warned",
    [
        (ClientHello("a.test"), "a.test", TUNNEL, False, False),
        (ClientHello("b.test"), "a.test", TUNNEL, True, False),
        (ClientHello("b.test"), "a.test", TunnelConfig(sni_mismatch="log"), False, True),
        (ClientHello("b.test"), "a.test", TunnelConfig(sni_mismatch="allow"), False, False),
        (ClientHello(None), "a.test", TUNNEL, False, False),
        (ClientHello("b.test"), "10.0.0.1", TUNNEL, False, False),
        (ClientHello("b.test"), "2001:db8::1", TUNNEL, False, False),
        (ClientHello("b.test", ech=True), "a.test", TUNNEL, False, False),
        (ClientHello("a.test", ech=True), "a.test", TunnelConfig(ech="deny"), True, False),
    ],
)
def test_screen(
    hello: ClientHello, host: str, settings: TunnelConfig, denied: bool, warned: bool
) -> None:
    verdict = screen(hello, host, settings)
    assert isinstance(verdict, Screening)
    assert (bool(verdict.denied), bool(verdict.warning)) == (denied, warned)


def ctx(**kw: Any) -> AclContext:
    base: dict[str, Any] = {
        "client": None,
        "method": "CONNECT",
        "host": "x",
        "port": 443,
        "url": "x:443",
    }
    return AclContext(**(base | kw))


def test_ssl_sni_acl() -> None:
    acl = make_acl("s", "ssl_sni", [".Example.com", "exact.test."])
    assert isinstance(acl, SslSniAcl)
    assert acl.match(ctx(sni="example.com")) and acl.match(ctx(sni="a.b.EXAMPLE.com"))
    assert acl.match(ctx(sni="exact.test"))
    assert not acl.match(ctx(sni="sub.exact.test")) and not acl.match(ctx(sni="notexample.com"))
    assert not acl.match(ctx(sni="")) and not acl.match(ctx(sni=None))
    assert not acl.match(ctx(sni=None, host="example.com"))  # the CONNECT host is not the SNI
    with pytest.raises(NeedSni):
        acl.match(ctx(sni_pending=True))
    with pytest.raises(AclError, match=r"acl\.s\.ssl_sni: 'a b' is not a domain"):
        make_acl("s", "ssl_sni", ["a b"])


def test_a_policy_knows_whether_it_needs_the_sni() -> None:
    acls = predefined() | {"s": make_acl("s", "ssl_sni", ["a.test"])}
    assert AccessPolicy([parse_rule("allow s", acls)]).needs_sni
    assert not AccessPolicy([parse_rule("allow all", acls)]).needs_sni


def test_tunnel_configuration() -> None:
    c = loads(
        '[tunnel]\npeek_ports = [443, 8443]\nsni_mismatch = "log"\nech = "deny"\n'
        "[timeouts]\nclient_hello = 2.5\n"
    )
    assert c.tunnel == TunnelConfig(frozenset({443, 8443}), "log", "deny")
    assert c.timeouts.client_hello == 2.5
    d = loads("")
    assert d.tunnel == TunnelConfig(frozenset({443}), "deny", "allow")
    assert d.timeouts.client_hello == 10
    assert loads("[tunnel]\npeek_ports = []\n").tunnel.peek_ports == frozenset()


def test_bad_tunnel_configuration_is_named_by_line() -> None:
    text = (
        "[tunnel]\n"
        'peek_ports = [443, 0, "x"]\n'
        'sni_mismatch = "warn"\n'
        "ech = true\n"
        "peek = 1\n"
        "[timeouts]\n"
        "client_hello = 0\n"
    )
    with pytest.raises(ConfigError) as e:
        loads(text, "p.toml")
    assert e.value.problems == [
        "p.toml:2: tunnel.peek_ports: 0 is not a port (1-65535)",
        "p.toml:2: tunnel.peek_ports: 'x' is not a port (1-65535)",
        'p.toml:3: tunnel.sni_mismatch: expected "deny" or "log" or "allow", got \'warn\'',
        'p.toml:4: tunnel.ech: expected "allow" or "deny", got True',
        "p.toml:5: tunnel.peek: unknown key (known: peek_ports, sni_mismatch, ech)",
        "p.toml:7: timeouts.client_hello: must be greater than 0, got 0",
    ]
    with pytest.raises(ConfigError, match=r"tunnel\.peek_ports: expected a list of ports"):
        loads("[tunnel]\npeek_ports = 443\n")


def record(sni: str | None) -> TransactionRecord:
    return TransactionRecord(
        "127.0.0.1", "CONNECT", "example.com:443", 403, 10, 7, 1700000000.0, 0.5,
        "93.184.216.34:443", TCP_DENIED, sni=sni,
    )  # fmt: skip


def test_the_sni_in_the_log_lines() -> None:
    line = squid(record("evil.test"))
    assert line.split() [3:] == [
        "TCP_DENIED/403", "7", "CONNECT", "example.com:443", "-",
        "HIER_DIRECT/93.184.216.34", "-", "sni=evil.test",
    ]  # fmt: skip
    assert squid(record("")).endswith(" - sni=-")
    assert len(squid(record(None)).split()) == 10  # as Squid's: nothing appended
    assert combined(record("evil.test")).endswith('"-" "-" "sni=evil.test"')
    assert combined(record(None)).endswith('"-" "-"')
    assert json.loads(as_json(record("evil.test")))["sni"] == "evil.test"
    assert json.loads(as_json(record(None)))["sni"] is None
    # the client chooses the SNI: it cannot split or forge a line (the parser allows no such
    # name, and the formats escape whatever a record holds)
    assert "\n" not in squid(record("a\nb")) and " " not in squid(record("a b")).split("sni=")[1]


def test_credentials_of_the_connect_serve_rules_after_the_ssl_sni_rule(
    make: Callable[..., Harness], tmp_path: Any
) -> None:
    digest = base64.b64encode(hashlib.sha1(b"pw").digest()).decode()
    (tmp_path / "users").write_text(f"alice:{{SHA}}{digest}\n")
    acls = SNI_ACLS + '[acl.users]\nproxy_auth = ["REQUIRED"]\n'
    rules = '"allow localhost sni_ok", "allow localhost users", "deny all"'
    text = config(rules, acls) + f"[auth]\nhtpasswd = {json.dumps(str(tmp_path / 'users'))}\n"
    h = make(text)
    authority = ORIGIN_IP.encode() + b":443"
    login = b"Proxy-Authorization: Basic " + base64.b64encode(b"alice:pw") + b"\r\n"
    for credentials, name, allowed in [
        (b"", "www.allowed.test", True),  # decided by the first rule: no credentials needed
        (login, "other.test", True),  # by the second, with the CONNECT's credentials
        (b"", "other.test", False),  # no credentials: cannot be asked for after the 200
    ]:
        c = h.connect()
        c.send(connect_head(authority).replace(b"\r\n\r\n", b"\r\n" + credentials + b"\r\n"))
        up = h.accept()
        assert c.take() == ESTABLISHED
        c.send(real_hello(name))
        assert (up.received() != b"") is allowed and c.closed is not allowed, (name, credentials)
    assert [r.user for r in h.records] == [""]  # the refused one; the others still run
