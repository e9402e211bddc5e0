"""Tests for :mod:`fwproxy.acl` (ACLs and rules, sans-IO) and the ``acl`` filter."""

from __future__ import annotations

import calendar
import ipaddress
from types import SimpleNamespace

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyObject

from fwproxy.acl import (
    ACL_TYPES,
    CLIENT_CERT_NOTE,
    Acl,
    AclContext,
    AclError,
    ClientCert,
    NeedAddresses,
    client_ip,
    make_acl,
    predefined,
)
from fwproxy.filters.acl import AclFilter, AclFilterFactory
from fwproxy.interfaces import IConnectFilter, IFilterFactory, IRequestFilter
from fwproxy.message import Request, Response
from fwproxy.record import TCP_DENIED
from fwproxy.rules import AccessPolicy, parse_rule

ip = ipaddress.ip_address


def ctx(**kw) -> AclContext:
    values = {
        "client": ip("10.0.0.1"),
        "method": "GET",
        "host": "example.com",
        "port": 80,
        "url": "http://example.com/",
        "utcoffset": 0,
    }
    values.update(kw)
    return AclContext(**values)  # type: ignore[arg-type]


def utc(*when: int) -> float:
    return float(calendar.timegm((*when, 0, 0, 0) if len(when) == 5 else when))


# -- client_ip -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host, expected",
    [
        ("10.0.0.1", "10.0.0.1"),
        ("::1", "::1"),
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("::FFFF:192.0.2.7", "192.0.2.7"),
        ("fe80::1%eth0", "fe80::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("", None),
        ("example.com", None),
        ("unix:/tmp/s", None),
    ],
)
def test_client_ip(host, expected):
    got = client_ip(host)
    assert (None if got is None else str(got)) == expected


# -- each ACL type ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "nets, client, matches",
    [
        (["10.0.0.0/8"], "10.1.2.3", True),
        (["10.0.0.0/8"], "11.0.0.1", False),
        (["10.0.0.0/8"], "::ffff:10.1.2.3", True),  # IPv4-mapped IPv6 client
        (["10.0.0.0/8"], "::ffff:11.1.2.3", False),
        (["192.0.2.7"], "192.0.2.7", True),  # a bare address is a /32
        (["192.0.2.7"], "192.0.2.8", False),
        (["192.0.2.7/24"], "192.0.2.200", True),  # host bits are not an error
        (["2001:db8::/32"], "2001:db8:1::5", True),
        (["2001:db8::/32"], "2001:db9::5", False),
        (["::1/128"], "::1", True),
        (["::1/128"], "127.0.0.1", False),
        (["0.0.0.0/0"], "2001:db8::1", False),  # families never mix
        (["::/0"], "10.0.0.1", False),
        (["10.0.0.0/8", "2001:db8::/32"], "2001:db8::9", True),
        (["10.0.0.0/8"], "", False),
        (["10.0.0.0/8"], "fe80::1%eth0", False),
    ],
)
def test_src(nets, client, matches):
    acl = make_acl("a", "src", nets)
    assert acl.match(ctx(client=client_ip(client))) is matches


@pytest.mark.parametrize(
    "nets, addresses, matches",
    [
        (["93.184.0.0/16"], ["93.184.216.34"], True),
        (["93.184.0.0/16"], ["93.184.216.34", "1.1.1.1"], False),  # all must be inside
        (["93.184.0.0/16"], ["1.1.1.1"], False),
        (["93.184.0.0/16"], [], False),  # nothing resolved: no match
        (["2001:db8::/32"], ["2001:db8::1"], True),
        (["127.0.0.0/8"], ["::ffff:127.0.0.1"], True),  # as the filter normalises them
    ],
)
def test_dst(nets, addresses, matches):
    acl = make_acl("d", "dst", nets)
    assert acl.needs_addresses
    addrs = tuple(client_ip(a) for a in addresses)
    assert acl.match(ctx(addresses=addrs)) is matches


def test_dst_without_addresses_asks_for_them():
    acl = make_acl("d", "dst", ["10.0.0.0/8"])
    with pytest.raises(NeedAddresses):
        acl.match(ctx())


@pytest.mark.parametrize(
    "name, addr, matches",
    [
        ("to_localhost", "127.0.0.1", True),
        ("to_localhost", "127.255.0.1", True),
        ("to_localhost", "::1", True),
        ("to_localhost", "0.0.0.0", True),
        ("to_localhost", "10.0.0.1", False),
        ("to_linklocal", "169.254.169.254", True),
        ("to_linklocal", "fe80::1", True),
        ("to_linklocal", "fd00:ec2::254", True),
        ("to_linklocal", "169.255.0.1", False),
        ("to_private", "10.1.1.1", True),
        ("to_private", "172.16.0.1", True),
        ("to_private", "172.32.0.1", False),
        ("to_private", "192.168.1.1", True),
        ("to_private", "100.64.0.1", True),
        ("to_private", "fd12::1", True),
        ("to_private", "93.184.216.34", False),
        ("all", "93.184.216.34", True),
    ],
)
def test_predefined(name, addr, matches):
    acl = predefined()[name]
    assert acl.match(ctx(addresses=(ip(addr),))) is matches


@pytest.mark.parametrize(
    "domains, host, matches",
    [
        (["example.com"], "example.com", True),
        (["example.com"], "EXAMPLE.com.", True),
        (["example.com"], "www.example.com", False),  # exact without the dot
        (["example.com"], "badexample.com", False),
        ([".example.com"], "example.com", True),  # squid: the domain itself too
        ([".example.com"], "www.example.com", True),
        ([".example.com"], "a.b.Example.COM", True),
        ([".example.com"], "badexample.com", False),
        ([".example.com"], "example.com.evil.net", False),
        (["Example.COM."], "example.com", True),
        (["a.com", ".b.org"], "x.b.org", True),
        (["a.com", ".b.org"], "x.a.com", False),
    ],
)
def test_dstdomain(domains, host, matches):
    acl = make_acl("d", "dstdomain", domains)
    assert acl.match(ctx(host=host)) is matches


@pytest.mark.parametrize(
    "patterns, host, matches",
    [
        ([r"^(www\.)?example\.com$"], "WWW.EXAMPLE.COM", True),  # case-insensitive
        ([r"^(www\.)?example\.com$"], "api.example.com", False),
        ([r"\.ru$", r"^ads\."], "ads.example.com", True),
        ([r"\.ru$", r"^ads\."], "example.com", False),
        ([r"bank"], "mybank.example", True),  # search, not match
    ],
)
def test_dstdom_regex(patterns, host, matches):
    assert make_acl("r", "dstdom_regex", patterns).match(ctx(host=host)) is matches


@pytest.mark.parametrize(
    "ports, port, matches",
    [
        ([443], 443, True),
        ([443], 444, False),
        (["443"], 443, True),
        (["1025-65535"], 1025, True),
        (["1025-65535"], 65535, True),
        (["1025-65535"], 1024, False),
        ([80, "8000-8999"], 8080, True),
        ([80, "8000-8999"], 9000, False),
        (["1-65535"], 1, True),
        (443, 443, True),  # a single value is a list of one
    ],
)
def test_port(ports, port, matches):
    assert make_acl("p", "port", ports).match(ctx(port=port)) is matches


@pytest.mark.parametrize(
    "methods, method, matches",
    [
        (["CONNECT"], "CONNECT", True),
        (["connect"], "CONNECT", True),
        (["CONNECT"], "connect", True),
        (["GET", "HEAD"], "HEAD", True),
        (["GET", "HEAD"], "POST", False),
        (["PROPFIND"], "PROPFIND", True),
    ],
)
def test_method(methods, method, matches):
    assert make_acl("m", "method", methods).match(ctx(method=method)) is matches


@pytest.mark.parametrize(
    "patterns, url, matches",
    [
        ([r"\.exe$"], "http://e.com/setup.exe", True),
        ([r"\.exe$"], "http://e.com/setup.EXE", False),  # case-sensitive like squid's
        ([r"(?i)\.exe$"], "http://e.com/setup.EXE", True),
        ([r"^http://e\.com/admin"], "http://e.com/admin/x", True),
        ([r"^http://e\.com/admin"], "http://x.com/?u=http://e.com/admin", False),
        ([r"secret"], "http://x.com/?u=secret", True),
    ],
)
def test_url_regex(patterns, url, matches):
    assert make_acl("u", "url_regex", patterns).match(ctx(url=url)) is matches


# 2024-01-05 is a Friday, 2024-01-06 a Saturday, 2024-01-07 a Sunday
@pytest.mark.parametrize(
    "spec, when, matches",
    [
        ("MTWHF 08:00-18:00", (2024, 1, 5, 8, 0), True),
        ("MTWHF 08:00-18:00", (2024, 1, 5, 17, 59), True),
        ("MTWHF 08:00-18:00", (2024, 1, 5, 18, 0), False),  # the end is exclusive
        ("MTWHF 08:00-18:00", (2024, 1, 5, 7, 59), False),
        ("MTWHF 08:00-18:00", (2024, 1, 6, 12, 0), False),  # Saturday
        ("AS", (2024, 1, 6, 12, 0), True),
        ("AS", (2024, 1, 7, 0, 0), True),
        ("AS", (2024, 1, 8, 12, 0), False),  # Monday
        ("M", (2024, 1, 8, 0, 0), True),
        ("T", (2024, 1, 9, 23, 59), True),
        ("W", (2024, 1, 10, 12, 0), True),
        ("H", (2024, 1, 11, 12, 0), True),
        ("H", (2024, 1, 10, 12, 0), False),
        ("F", (2024, 1, 5, 12, 0), True),
        ("S", (2024, 1, 7, 12, 0), True),
        ("S", (2024, 1, 6, 12, 0), False),
        ("12:00-13:00", (2024, 1, 7, 12, 30), True),
        # wrapping past midnight
        ("22:00-06:00", (2024, 1, 5, 22, 0), True),
        ("22:00-06:00", (2024, 1, 5, 23, 59), True),
        ("22:00-06:00", (2024, 1, 6, 0, 0), True),
        ("22:00-06:00", (2024, 1, 6, 5, 59), True),
        ("22:00-06:00", (2024, 1, 6, 6, 0), False),
        ("22:00-06:00", (2024, 1, 6, 21, 59), False),
        ("22:00-06:00", (2024, 1, 6, 12, 0), False),
        ("00:00-24:00", (2024, 1, 6, 23, 59), True),
        ("MTWHF 22:00-06:00", (2024, 1, 5, 23, 0), True),
        ("MTWHF 22:00-06:00", (2024, 1, 7, 23, 0), False),  # Sunday night
    ],
)
def test_time(spec, when, matches):
    acl = make_acl("t", "time", [spec])
    assert acl.match(ctx(now=utc(*when), utcoffset=0)) is matches


def test_time_several_specs_any_matches():
    acl = make_acl("t", "time", ["MTWHF 09:00-17:00", "AS 10:00-12:00"])
    assert acl.match(ctx(now=utc(2024, 1, 6, 11, 0)))
    assert not acl.match(ctx(now=utc(2024, 1, 6, 13, 0)))
    assert acl.match(ctx(now=utc(2024, 1, 5, 13, 0)))


@pytest.mark.parametrize(
    "offset, matches",
    [(0, False), (3600, True), (-3600, False), (5 * 3600 + 1800, True)],
)
def test_time_uses_the_utc_offset(offset, matches):
    # 07:30 UTC on a Friday; "08:00-18:00" is local time
    acl = make_acl("t", "time", ["F 08:00-18:00"])
    assert acl.match(ctx(now=utc(2024, 1, 5, 7, 30), utcoffset=offset)) is matches


def test_time_offset_can_change_the_day():
    acl = make_acl("t", "time", ["A"])  # Saturday
    now = utc(2024, 1, 5, 23, 30)  # Friday 23:30 UTC
    assert not acl.match(ctx(now=now, utcoffset=0))
    assert acl.match(ctx(now=now, utcoffset=3600))


@pytest.mark.parametrize(
    "users, user, matches",
    [
        (["alice"], "alice", True),
        (["alice"], "bob", False),
        (["alice"], "", False),
        (["REQUIRED"], "anyone", True),
        (["REQUIRED"], "", False),
        (["alice", "REQUIRED"], "bob", True),
        (["Alice"], "alice", False),
    ],
)
def test_proxy_auth(users, user, matches):
    assert make_acl("u", "proxy_auth", users).match(ctx(user=user)) is matches


@pytest.mark.parametrize(
    "names, cert, matches",
    [
        (["robot"], ClientCert("Robot", ("robot",)), True),
        (["ROBOT"], ClientCert("robot", ("robot",)), True),
        ([".clients.test"], ClientCert("a", ("a", "a.clients.test")), True),
        ([".clients.test"], ClientCert("clients.test", ("clients.test",)), True),
        ([".clients.test"], ClientCert("x", ("x", "evilclients.test")), False),
        (["alice"], ClientCert("bob", ("bob",)), False),
        (["alice", "bob"], ClientCert("bob", ("bob",)), True),
        (["alice"], ClientCert("", ()), False),  # a verified certificate with no name
        (["alice"], None, False),  # no verified certificate: never
        ([".clients.test"], None, False),
    ],
)
def test_client_cert(names, cert, matches):
    assert make_acl("c", "client_cert", names).match(ctx(client_cert=cert)) is matches


def test_client_cert_negated_matches_a_connection_without_a_certificate():
    defined = acls(team=("client_cert", ["alice"]))
    p = policy("deny !team", "allow all", defined=defined)
    assert not p.allows(ctx())
    assert p.allows(ctx(client_cert=ClientCert("alice", ("alice",))))


def test_the_acl_filter_reads_the_client_cert_from_the_request_notes():
    defined = acls(team=("client_cert", [".clients.test"]))
    f, _ = make_filter(["allow team", "deny all"], defined=defined)
    req = request()
    assert_denied(f.requestReceived(req), req)
    req = request()
    req.notes[CLIENT_CERT_NOTE] = ClientCert("a", ("a.clients.test",))
    assert f.requestReceived(req) is None


def test_every_type_is_registered():
    assert set(ACL_TYPES) == {
        "src",
        "dst",
        "dstdomain",
        "dstdom_regex",
        "port",
        "localport",
        "method",
        "url_regex",
        "urlpath_regex",
        "time",
        "proxy_auth",
        "client_cert",
        "ssl_sni",
    }
    for kind, cls in ACL_TYPES.items():
        assert cls.kind == kind and issubclass(cls, Acl)
    assert [k for k, c in ACL_TYPES.items() if c.needs_addresses] == ["dst"]


# -- ACL definition errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, values, fragment",
    [
        ("nosuch", ["x"], "unknown type 'nosuch'"),
        ("src", ["10.0.0.0/33"], "'10.0.0.0/33' is not an IP address or CIDR network"),
        ("src", ["nope"], "'nope' is not an IP"),
        ("src", [], "expected a non-empty list"),
        ("src", {"a": 1}, "expected a non-empty list"),
        ("src", [True], "True is not a string"),
        ("src", [1.5], "1.5 is not a string"),
        ("dst", ["300.0.0.1"], "is not an IP address"),
        ("dstdomain", ["exa mple.com"], "is not a domain"),
        ("dstdomain", ["."], "is not a domain"),
        ("dstdom_regex", ["("], "bad regular expression '('"),
        ("url_regex", ["[a-"], "bad regular expression '[a-'"),
        ("port", [0], "'0' is out of range"),
        ("port", [65536], "'65536' is out of range"),
        ("port", ["90-80"], "'90-80' is out of range"),
        ("port", ["http"], "'http' is not a port or range"),
        ("port", ["-80"], "'-80' is not a port or range"),
        ("port", ["1-2-3"], "'1-2-3' is not a port or range"),
        ("method", ["GET POST"], "'GET POST' is not an HTTP method"),
        ("method", [""], "'' is not an HTTP method"),
        ("time", ["X 09:00-17:00"], "is not like"),
        ("time", ["09:00"], "is not like"),
        ("time", [""], "is not like"),
        ("time", ["25:00-26:00"], "invalid time of day"),
        ("time", ["09:60-10:00"], "invalid time of day"),
        ("proxy_auth", [], "expected a non-empty list"),
        ("client_cert", [], "expected a non-empty list"),
        ("client_cert", ["."], "'.' is not a certificate name"),
        ("client_cert", [" "], "is not a certificate name"),
    ],
)
def test_acl_definition_errors_name_the_acl_type_and_value(kind, values, fragment):
    with pytest.raises(AclError) as e:
        make_acl("myacl", kind, values)
    msg = str(e.value)
    assert msg.startswith("acl.myacl")
    assert fragment in msg
    assert "\n" not in msg


# -- rules -----------------------------------------------------------------------------------


def acls(**defs) -> dict[str, Acl]:
    out = predefined()
    for name, (kind, values) in defs.items():
        out[name] = make_acl(name, kind, values)
    return out


STANDARD = acls(
    lan=("src", ["10.0.0.0/8"]),
    ssl_ports=("port", [443]),
    safe_ports=("port", [80, 443, "1025-65535"]),
    connect=("method", ["CONNECT"]),
    blocked=("dstdomain", [".blocked.example"]),
    bad_dst=("dst", ["192.0.2.0/24"]),
    staff=("proxy_auth", ["REQUIRED"]),
    certified=("client_cert", [".clients.example"]),
)


def policy(*rules: str, defined: dict[str, Acl] = STANDARD) -> AccessPolicy:
    return AccessPolicy([parse_rule(r, defined) for r in rules])


def test_parse_rule():
    rule = parse_rule("  deny   connect  !ssl_ports ", STANDARD)
    assert rule.allow is False
    assert rule.terms == ((STANDARD["connect"], False), (STANDARD["ssl_ports"], True))
    assert rule.text == "deny connect !ssl_ports"
    assert not rule.needs_addresses
    assert parse_rule("allow lan bad_dst", STANDARD).needs_addresses


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("allow nosuch", "uses ACL 'nosuch', which is not defined"),
        ("allow lan !nosuch", "uses ACL 'nosuch', which is not defined"),
        ("allow !", "uses ACL '', which is not defined"),
        ("permit lan", 'must start with "allow" or "deny"'),
        ("Allow lan", 'must start with "allow" or "deny"'),
        ("", 'must start with "allow" or "deny"'),
        ("allow", 'names no ACL (write "allow all")'),
        ("deny", 'names no ACL (write "deny all")'),
    ],
)
def test_rule_errors(text, fragment):
    with pytest.raises(AclError) as e:
        parse_rule(text, STANDARD, where="access.rules[3]")
    assert str(e.value).startswith("access.rules[3]: ")
    assert fragment in str(e.value)


def test_first_match_wins():
    p = policy("deny lan connect", "allow lan", "deny all")
    assert p.allows(ctx(method="GET"))
    assert not p.allows(ctx(method="CONNECT", port=443))
    decided = p.check(ctx(method="CONNECT", port=443))
    assert decided is not None and decided.text == "deny lan connect"
    p2 = policy("allow lan", "deny lan connect", "deny all")
    assert p2.allows(ctx(method="CONNECT", port=443))


def test_no_match_denies():
    p = policy("allow lan")
    assert p.check(ctx(client=ip("192.0.2.1"))) is None
    assert not p.allows(ctx(client=ip("192.0.2.1")))
    assert not AccessPolicy([]).allows(ctx())


@pytest.mark.parametrize(
    "method, port, allowed",
    [
        ("CONNECT", 443, True),
        ("CONNECT", 22, False),
        ("GET", 22, True),
        ("GET", 80, True),
    ],
)
def test_negation(method, port, allowed):
    p = policy("deny connect !ssl_ports", "allow lan", "deny all")
    assert p.allows(ctx(method=method, port=port)) is allowed


def test_all_terms_must_match():
    p = policy("allow lan staff", "deny all")
    assert not p.allows(ctx(user=""))
    assert p.allows(ctx(user="alice"))
    assert not p.allows(ctx(client=ip("192.0.2.1"), user="alice"))


def test_dst_rules_need_addresses_only_when_reached():
    p = policy("allow lan", "deny bad_dst", "allow all")
    assert p.needs_addresses
    assert p.allows(ctx())  # decided before the dst rule
    with pytest.raises(NeedAddresses):
        p.check(ctx(client=ip("192.0.2.1")))
    outsider = ctx(client=ip("192.0.2.1"), addresses=(ip("192.0.2.9"),))
    assert not p.allows(outsider)
    assert p.allows(ctx(client=ip("192.0.2.1"), addresses=(ip("198.51.100.9"),)))


def test_a_failing_term_before_dst_avoids_the_lookup():
    p = policy("deny connect bad_dst", "allow lan", "deny all")
    assert p.allows(ctx(method="GET"))  # "connect" fails first: dst never evaluated
    with pytest.raises(NeedAddresses):
        p.allows(ctx(method="CONNECT", port=443))


def test_policy_without_dst_does_not_need_addresses():
    assert not policy("allow lan", "deny all").needs_addresses


@pytest.mark.parametrize(
    "rules, open_texts",
    [
        (["allow lan", "deny all"], []),
        (["allow staff", "deny all"], []),
        (["allow certified", "deny all"], []),
        (["allow !certified"], ["allow !certified"]),
        (["deny connect !ssl_ports", "allow lan", "deny all"], []),
        (["allow all"], ["allow all"]),
        (["allow safe_ports", "deny all"], ["allow safe_ports"]),
        (["allow connect ssl_ports"], ["allow connect ssl_ports"]),
        (["allow !lan"], ["allow !lan"]),  # a negated source admits everyone else
        (["allow !staff"], ["allow !staff"]),
        (["allow to_private"], ["allow to_private"]),
        (["allow safe_ports lan", "allow safe_ports"], ["allow safe_ports"]),
        (["deny all"], []),
        (["deny safe_ports"], []),
    ],
)
def test_open_rules(rules, open_texts):
    assert [r.text for r in policy(*rules).open_rules()] == open_texts


@pytest.mark.parametrize("nets", [["0.0.0.0/0"], ["::/0"], ["10.0.0.0/8", "0.0.0.0/0"]])
def test_open_rules_sees_through_a_src_acl_of_everything(nets):
    # squid's classic "acl all src 0.0.0.0/0": a src ACL that restricts nothing
    defined = acls(anywhere=("src", nets), lan=("src", ["10.0.0.0/8"]))
    p = policy("allow anywhere", "allow lan anywhere", defined=defined)
    assert [r.text for r in p.open_rules()] == ["allow anywhere"]


# -- the acl filter --------------------------------------------------------------------------


class FakeResolver:
    def __init__(self, answer):
        self.answer = answer
        self.calls: list[str] = []

    def resolve(self, host):
        self.calls.append(host)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def make_filter(rules, answer=(), defined=STANDARD):
    resolver = FakeResolver(list(answer) if isinstance(answer, tuple) else answer)
    context = SimpleNamespace(
        reactor=MemoryReactorClock(),
        resolver=resolver,
        config=SimpleNamespace(access=policy(*rules, defined=defined)),
        listening=[],
    )
    return AclFilterFactory.build({}, context), resolver


def request(client="10.0.0.1", method="GET", host="example.com", port=80):
    url = f"{host}:{port}" if method == "CONNECT" else f"http://{host}:{port}/"
    return Request(method, url, host, port, b"/", client=(client, 50000))


def assert_denied(result, req):
    assert isinstance(result, Response)
    assert result.status == 403
    assert result.result_code == TCP_DENIED
    assert req.url.encode() in result.body


def test_filter_provides_its_interfaces():
    f, _ = make_filter(["allow all"])
    assert isinstance(f, AclFilter)
    assert verifyObject(IRequestFilter, f)
    assert verifyObject(IConnectFilter, f)
    assert verifyObject(IFilterFactory, AclFilterFactory)
    assert AclFilterFactory.name == "acl"


def test_factory_takes_no_options():
    context = SimpleNamespace(
        reactor=None, resolver=None, config=SimpleNamespace(access=None), listening=[]
    )
    with pytest.raises(ValueError, match="acl: takes no options"):
        AclFilterFactory.build({"rules": []}, context)


@pytest.mark.parametrize("hook", ["requestReceived", "connectReceived"])
def test_filter_allows_synchronously(hook):
    f, resolver = make_filter(["allow lan", "deny all"])
    req = request(method="CONNECT" if hook == "connectReceived" else "GET", port=443)
    assert getattr(f, hook)(req) is None
    assert resolver.calls == []
    assert req.addresses is None


@pytest.mark.parametrize("client", ["192.0.2.1", "::ffff:192.0.2.1", "2001:db8::1", ""])
def test_src_denial_is_403_tcp_denied(client):
    f, resolver = make_filter(["allow lan", "deny all"])
    req = request(client=client)
    assert_denied(f.requestReceived(req), req)
    assert resolver.calls == []


@pytest.mark.parametrize("client", ["10.9.9.9", "::ffff:10.9.9.9"])
def test_ipv4_mapped_clients_match_ipv4_src(client):
    f, _ = make_filter(["allow lan", "deny all"])
    assert f.requestReceived(request(client=client)) is None


def test_client_denied_by_src_never_triggers_a_lookup():
    f, resolver = make_filter(["deny !lan", "deny bad_dst", "allow all"], ["192.0.2.5"])
    req = request(client="198.51.100.1")
    assert_denied(f.requestReceived(req), req)
    assert resolver.calls == []


def test_dst_rule_reached_resolves_and_denies():
    f, resolver = make_filter(["deny bad_dst", "allow lan", "deny all"], ["192.0.2.5"])
    req = request()
    assert_denied(f.requestReceived(req), req)
    assert resolver.calls == ["example.com"]


def test_dst_rule_reached_resolves_and_allows_narrowing_the_addresses():
    f, resolver = make_filter(
        ["deny bad_dst", "allow lan", "deny all"],
        ["192.0.2.5", "198.51.100.7", "2001:db8::7", "::ffff:192.0.2.6"],
    )
    req = request()
    assert f.requestReceived(req) is None
    assert resolver.calls == ["example.com"]
    assert req.addresses == ["198.51.100.7", "2001:db8::7"]


def test_metadata_address_is_never_connected_to():
    f, _ = make_filter(
        ["deny to_linklocal", "allow lan", "deny all"], ["169.254.169.254", "93.184.216.34"]
    )
    req = request(host="rebind.example")
    assert f.requestReceived(req) is None
    assert req.addresses == ["93.184.216.34"]


def test_already_resolved_addresses_are_used_not_looked_up_again():
    f, resolver = make_filter(["deny bad_dst", "allow lan", "deny all"], ["198.51.100.1"])
    req = request()
    req.addresses = ["192.0.2.1", "203.0.113.1"]
    assert f.requestReceived(req) is None
    assert resolver.calls == []
    assert req.addresses == ["203.0.113.1"]


def test_async_resolution_returns_a_deferred():
    d_resolve: Deferred = Deferred()
    f, _resolver = make_filter(["deny bad_dst", "allow lan", "deny all"], d_resolve)
    req = request(method="CONNECT", port=443)
    d = f.connectReceived(req)
    assert isinstance(d, Deferred)
    results: list = []
    d.addCallback(results.append)
    assert results == [] and req.addresses is None
    d_resolve.callback(["192.0.2.9", "203.0.113.9"])
    assert results == [None]
    assert req.addresses == ["203.0.113.9"]


def test_async_resolution_denies():
    d_resolve: Deferred = Deferred()
    f, _ = make_filter(["deny bad_dst", "allow lan", "deny all"], d_resolve)
    req = request()
    results: list = []
    f.requestReceived(req).addCallback(results.append)
    d_resolve.callback(["192.0.2.9"])
    assert len(results) == 1
    assert_denied(results[0], req)


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param([], id="empty"),
        pytest.param(["not-an-address"], id="garbage"),
        pytest.param(OSError("lookup failed"), id="raises"),
        pytest.param("fail", id="deferred-fails"),
    ],
)
@pytest.mark.parametrize(
    "rules, allowed",
    [
        (["deny bad_dst", "allow lan", "deny all"], True),  # a dst ACL matches no addresses
        (["allow bad_dst", "deny all"], False),
    ],
)
def test_unresolvable_destinations(answer, rules, allowed):
    if answer == "fail":
        answer = Deferred()
        answer.errback(OSError("NXDOMAIN"))
    f, _ = make_filter(rules, answer)
    req = request()
    result = f.requestReceived(req)
    if isinstance(result, Deferred):
        out: list = []
        result.addBoth(out.append)
        result = out[0]
    if allowed:
        assert result is None
        assert req.addresses == []
    else:
        assert_denied(result, req)


def test_filter_uses_the_reactor_clock_for_time_acls():
    defined = acls(night=("time", ["00:00-01:00"]), lan=("src", ["10.0.0.0/8"]))
    f, _ = make_filter(["deny night", "allow lan"], defined=defined)
    clock = f._clock
    # the filter evaluates time ACLs in local time: pick a clock reading that is night locally
    import time as _time

    lt = _time.localtime(0)
    clock.advance(86400 * 3 - (lt.tm_hour * 3600 + lt.tm_min * 60) + 1800)
    assert _time.localtime(clock.seconds()).tm_hour == 0
    assert isinstance(f.requestReceived(request()), Response)
    clock.advance(3 * 3600)
    assert f.requestReceived(request()) is None
