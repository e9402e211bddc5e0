"""The wider SSRF guard, sans-IO and in memory: :mod:`fwproxy.special_addresses` (the
``to_nonpublic`` ranges, IPv4 embedded in IPv6), the ACLs that use it (:mod:`fwproxy.acl`,
:mod:`fwproxy.selfcheck`), and whole requests through a proxy on a ``MemoryReactorClock``.
The same, end to end in a network namespace: tests/integration/test_ssrf_netns.py."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fwproxy.acl import AclContext, NetworkSet, make_acl, predefined
from fwproxy.rules import AccessPolicy, parse_rule
from fwproxy.selfcheck import is_self, parse_ip
from fwproxy.special_addresses import NONPUBLIC, NONPUBLIC_EXCEPTIONS, embedded_ipv4
from fwproxy.testing import Harness, get, status_of

v4 = ipaddress.IPv4Address
v6 = ipaddress.IPv6Address


def embedded(address: str) -> list[str]:
    return [str(v4(x)) for x in embedded_ipv4(int(v6(address)))]


# -- IPv4 embedded in IPv6 ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "address, expected",
    [
        # NAT64, the well-known prefix (RFC 6052): the last 32 bits
        ("64:ff9b::a9fe:a9fe", ["169.254.169.254"]),
        ("64:ff9b::169.254.169.254", ["169.254.169.254"]),
        ("64:ff9b::7f00:1", ["127.0.0.1"]),
        ("64:ff9b::808:808", ["8.8.8.8"]),
        # 6to4 (RFC 3056): bits 16-47
        ("2002:a9fe:a9fe::1", ["169.254.169.254"]),
        ("2002:0a00:0001:1234::5", ["10.0.0.1"]),
        # Teredo (RFC 4380): the server, then the client (inverted)
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", ["65.54.227.120", "192.0.2.45"]),
        ("2001:0:a9fe:a9fe::ffff:ffff", ["169.254.169.254", "0.0.0.0"]),
        ("2001:0:808:808:0:0:5601:5601", ["8.8.8.8", "169.254.169.254"]),
        # IPv4-compatible (deprecated), -mapped and -translated
        ("::a9fe:a9fe", ["169.254.169.254"]),
        ("::127.0.0.1", ["127.0.0.1"]),
        ("::ffff:a9fe:a9fe", ["169.254.169.254"]),
        ("::ffff:0:a9fe:a9fe", ["169.254.169.254"]),
        # the local-use NAT64 prefix (RFC 8215): the /48, /56, /64 and /96 layouts of RFC 6052
        (
            "64:ff9b:1:a9fe:00a9:fe00::",
            ["169.254.169.254", "254.169.254.0", "169.254.0.0", "0.0.0.0"],
        ),
    ],
)
def test_embedded_ipv4(address, expected):
    assert embedded(address) == expected


@pytest.mark.parametrize(
    "address",
    ["::", "::1", "2001:db8::a9fe:a9fe", "fe80::a9fe:a9fe", "2003:a9fe:a9fe::1", "2001:1::a9fe"],
)
def test_no_ipv4_in_other_addresses(address):
    # :: and ::1 are IPv6's own unspecified and loopback addresses, not IPv4-compatible ones
    assert embedded(address) == []


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_every_ipv4_comes_back_out_of_each_embedding(x):
    ip = v4(x)
    teredo_client = x ^ 0xFFFFFFFF
    for address in (
        f"64:ff9b::{ip}",
        f"::ffff:{ip}",
        f"2002:{x >> 16:x}:{x & 0xFFFF:x}::1",
        f"2001:0:{x >> 16:x}:{x & 0xFFFF:x}::{teredo_client >> 16:x}:{teredo_client & 0xFFFF:x}",
        f"64:ff9b:1::{ip}",
    ):
        assert x in embedded_ipv4(int(v6(address))), address


def rfc6052(prefix_length: int, ipv4: str) -> str:
    """The address RFC 6052 section 2.2 makes of ``ipv4`` under 64:ff9b:1::/``prefix_length``,
    bit by bit: prefix, the IPv4 bits around the zero octet at bits 64-71, zero suffix."""
    prefix = format(int(v6("64:ff9b:1::")), "0128b")[:prefix_length]
    bits = format(int(v4(ipv4)), "032b")
    head = 64 - prefix_length if prefix_length < 64 else 0
    if prefix_length == 96:
        out = prefix + bits
    else:
        out = prefix + bits[:head] + "0" * 8 + bits[head:]
    return str(v6(int(out.ljust(128, "0"), 2)))


@pytest.mark.parametrize("index, length", list(enumerate((48, 56, 64, 96))))
@pytest.mark.parametrize("ipv4", ["169.254.169.254", "127.0.0.1", "10.1.2.3"])
def test_local_use_nat64_under_each_prefix_length(index, length, ipv4):
    address = rfc6052(length, ipv4)
    assert embedded(address)[index] == ipv4, address
    assert _match("to_nonpublic", address)


# -- the to_nonpublic ranges ---------------------------------------------------------------------


def test_every_exception_lies_inside_a_nonpublic_block():
    nets = [ipaddress.ip_network(n) for n in NONPUBLIC]
    for text in NONPUBLIC_EXCEPTIONS:
        exception = ipaddress.ip_network(text)
        assert any(
            exception.version == n.version and exception.subnet_of(n)  # type: ignore[arg-type]
            for n in nets
        ), text


NONPUBLIC_ADDRESSES = [
    "0.1.2.3", "10.9.8.7", "100.64.0.1", "127.0.0.1", "169.254.169.254", "172.31.255.255",
    "192.0.0.8", "192.0.0.170", "192.0.2.1", "192.168.1.1", "198.19.255.255", "198.51.100.1",
    "203.0.113.9", "240.0.0.1", "255.255.255.255", "224.0.0.1",
    "::1", "::", "64:ff9b:1::1", "100::1", "2001::1", "2001:2::1", "2001:db8::1", "3fff::1",
    "5f00::1", "fc00::1", "fd00:ec2::254", "fe80::1", "ff02::1", "fec0::1",
    # an IPv4 one embedded in an IPv6 one, through every embedding
    "64:ff9b::a00:1", "2002:c0a8:0101::1", "2001:0:a9fe:a9fe::", "::ffff:10.0.0.1", "::10.0.0.1",
]  # fmt: skip

PUBLIC_ADDRESSES = [
    "8.8.8.8", "1.1.1.1", "93.184.216.34", "100.63.255.255", "100.128.0.0", "172.32.0.1",
    "192.0.0.9", "192.0.0.10", "192.0.1.1", "198.20.0.1", "223.255.255.255",
    "2606:4700::1111", "2001:4860:4860::8888", "2001:1::1", "2001:1::2", "2001:3::1",
    "2001:4:112::1", "2001:20::1", "2001:30::1", "64:ff9b::808:808", "2002:0808:0808::1",
]  # fmt: skip


def _match(acl_name: str, address: str, listening=(("127.0.0.1", 3128),)) -> bool:
    ip = parse_ip(address)
    assert ip is not None
    ctx = AclContext(
        client=None, method="GET", host="h", port=80, url="", addresses=(ip,), listening=listening
    )
    return predefined()[acl_name].match(ctx)


@pytest.mark.parametrize("address", NONPUBLIC_ADDRESSES)
def test_nonpublic_addresses_are_in_to_nonpublic(address):
    assert _match("to_nonpublic", address)


@pytest.mark.parametrize("address", PUBLIC_ADDRESSES)
def test_globally_reachable_addresses_are_not(address):
    assert not _match("to_nonpublic", address)


@pytest.mark.parametrize(
    "acl, address",
    [
        ("to_linklocal", "64:ff9b::a9fe:a9fe"),  # the metadata service through NAT64
        ("to_linklocal", "2002:a9fe:a9fe::1"),
        ("to_linklocal", "2001:0:4136:e378:8000:63bf:5601:5601"),  # Teredo client 169.254.169.254
        ("to_linklocal", "::a9fe:a9fe"),
        ("to_localhost", "64:ff9b::7f00:1"),
        ("to_localhost", "::ffff:0:7f00:1"),
        ("to_private", "64:ff9b::a00:1"),
        ("to_private", "2002:c0a8:0101::1"),
        ("to_self", "64:ff9b::7f00:1"),  # the proxy listens on 127.0.0.1
    ],
)
def test_predefined_destination_acls_see_the_embedded_ipv4(acl, address):
    assert _match(acl, address)


@pytest.mark.parametrize("acl", ["to_linklocal", "to_localhost", "to_private", "to_self"])
def test_a_public_embedded_ipv4_matches_none(acl):
    assert not _match(acl, "64:ff9b::808:808")


def test_a_dst_acl_sees_the_embedded_ipv4_too():
    acl = make_acl("inside", "dst", ["10.0.0.0/8"])
    for address, expected in (
        ("64:ff9b::a00:1", True),
        ("2002:0a00:0001::1", True),
        ("64:ff9b::808:808", False),
    ):
        ip = parse_ip(address)
        ctx = AclContext(client=None, method="GET", host="h", port=80, url="", addresses=(ip,))
        assert acl.match(ctx) is expected, address


def test_a_src_acl_does_not():
    # a client cannot make itself "10.0.0.1" by the bits of its own IPv6 address
    acl = make_acl("inside", "src", ["10.0.0.0/8"])
    for address in ("2002:0a00:0001::1", "64:ff9b::a00:1", "::10.0.0.1"):
        ctx = AclContext(client=parse_ip(address), method="GET", host="h", port=80, url="")
        assert not acl.match(ctx), address


def test_network_set_exceptions():
    s = NetworkSet([ipaddress.ip_network("192.0.0.0/24")], [ipaddress.ip_network("192.0.0.9/32")])
    assert v4("192.0.0.8") in s and v4("192.0.0.9") not in s
    assert s.holds_destination(v6("64:ff9b::c000:8"))
    assert not s.holds_destination(v6("64:ff9b::c000:9"))
    assert v6("64:ff9b::c000:8") not in s  # plain membership: no embedded IPv4


def test_loop_detection_sees_nat64_to_the_proxys_own_port():
    listening = [("127.0.0.1", 3128)]
    assert is_self(["64:ff9b::7f00:1"], 3128, listening)
    assert not is_self(["64:ff9b::7f00:1"], 80, listening)
    assert not is_self(["64:ff9b::808:808"], 3128, listening)


def test_deny_to_nonpublic_guards_a_rule_that_would_allow():
    acls = predefined()
    acls["everyone"] = make_acl("everyone", "src", ["0.0.0.0/0", "::/0"])
    policy = AccessPolicy(
        [parse_rule(r, acls) for r in ("deny to_nonpublic", "allow everyone", "deny all")]
    )
    for address, allowed in (("8.8.8.8", True), ("10.0.0.1", False), ("64:ff9b::a00:1", False)):
        ctx = AclContext(
            client=v4("192.0.2.1"), method="GET", host="h", port=80, url="",
            addresses=(parse_ip(address),),
        )  # fmt: skip
        assert policy.allows(ctx) is allowed, address


# -- whole requests, in memory -----------------------------------------------------------------

CONFIG = """
[acl.localhost]
src = ["127.0.0.0/8"]
[access]
rules = ["deny to_linklocal", "deny to_localhost", "deny to_nonpublic", "allow localhost", "deny all"]
"""


@pytest.mark.parametrize(
    "target",
    [
        b"http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
        b"http://[2002:a9fe:a9fe::1]/",
        b"http://[2001:0:a9fe:a9fe::]/",
        b"http://[::ffff:169.254.169.254]/",
        b"http://[64:ff9b::7f00:1]:8080/",
        b"http://[64:ff9b::a00:1]/",
        b"http://nat64.test/",  # a name whose (DNS64) answer is the metadata service's
    ],
)
def test_requests_to_embedded_nonpublic_addresses_are_denied(target):
    with Harness(CONFIG) as h:
        h.resolver.answers["nat64.test"] = ["64:ff9b::a9fe:a9fe"]
        c = h.connect()
        c.send(get(target))
        assert status_of(c.received()) == 403
        assert h.attempts == []  # never connected
        assert h.records[0].notes["fwproxy.denied_by"].startswith("deny to_")


def test_connect_to_nat64_metadata_is_denied():
    with Harness(CONFIG + "\n[acl.ssl]\nport = [443]\n") as h:
        c = h.connect()
        c.send(b"CONNECT [64:ff9b::a9fe:a9fe]:443 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(c.received()) == 403
        assert h.attempts == []


def test_a_public_nat64_address_is_relayed():
    with Harness(CONFIG) as h:
        c = h.connect()
        c.send(get(b"http://[64:ff9b::808:808]/"))
        ((host, port, *_),) = h.attempts
        assert (host, port) == ("64:ff9b::808:808", 80)
