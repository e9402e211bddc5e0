# -*- test-case-name: tests.test_ssrf -*-
"""Addresses no egress proxy should connect to, and IPv4 addresses hidden inside IPv6 ones.

:data:`NONPUBLIC` and :data:`NONPUBLIC_EXCEPTIONS` are the IANA special-purpose address
ranges that are not globally reachable (the predefined ``to_nonpublic`` ACL).
:func:`embedded_ipv4` finds the IPv4 address(es) an IPv6 address carries (NAT64, 6to4, Teredo,
IPv4-compatible, -mapped and -translated), so that ``[64:ff9b::a9fe:a9fe]`` is checked as
169.254.169.254: a proxy on an IPv6 or NAT64 network must not reach the cloud metadata service
or its own loopback through a translator. Sans-IO, integers in and out (this is on every
request that reaches a ``dst`` rule).
"""

from __future__ import annotations

# The rows of the IANA IPv4 and IPv6 Special-Purpose Address Registries whose "Globally
# Reachable" column is False (RFC 6890 section 2.2.2, updated by RFC 8190):
#   https://www.iana.org/assignments/iana-ipv4-special-registry/ (as of 2025)
#   https://www.iana.org/assignments/iana-ipv6-special-registry/ (as of 2025)
# Rows that are True (or N/A) inside a False block are in NONPUBLIC_EXCEPTIONS. Teredo
# (2001::/32, N/A) stays inside 2001::/23 (False); 6to4 (2002::/16, N/A) and the well-known
# NAT64 prefix (64:ff9b::/96, True) are not listed: their embedded IPv4 is checked instead.
NONPUBLIC: tuple[str, ...] = (
    # -- IPv4 --
    "0.0.0.0/8",  # "This network" [RFC791]; 0.0.0.0/32 "This host on this network" inside it
    "10.0.0.0/8",  # Private-Use [RFC1918]
    "100.64.0.0/10",  # Shared Address Space [RFC6598]
    "127.0.0.0/8",  # Loopback [RFC1122]
    "169.254.0.0/16",  # Link Local [RFC3927] (the cloud metadata service 169.254.169.254)
    "172.16.0.0/12",  # Private-Use [RFC1918]
    "192.0.0.0/24",  # IETF Protocol Assignments [RFC6890] (holds 192.0.0.0/29 DS-Lite
    #                  [RFC7335], 192.0.0.8/32 dummy [RFC7600], 192.0.0.170-171 NAT64/DNS64
    #                  discovery [RFC8880], all False)
    "192.0.2.0/24",  # Documentation TEST-NET-1 [RFC5737]
    "192.168.0.0/16",  # Private-Use [RFC1918]
    "198.18.0.0/15",  # Benchmarking [RFC2544]
    "198.51.100.0/24",  # Documentation TEST-NET-2 [RFC5737]
    "203.0.113.0/24",  # Documentation TEST-NET-3 [RFC5737]
    "240.0.0.0/4",  # Reserved [RFC1112]
    "255.255.255.255/32",  # Limited Broadcast [RFC8190]
    # -- IPv6 --
    "::1/128",  # Loopback Address [RFC4291]
    "::/128",  # Unspecified Address [RFC4291]
    "::ffff:0:0/96",  # IPv4-mapped Address [RFC4291] (also checked as its IPv4)
    "64:ff9b:1::/48",  # IPv4-IPv6 Translat., local use [RFC8215]
    "100::/64",  # Discard-Only Address Block [RFC6666]
    "100:0:0:1::/64",  # Dummy IPv6 Prefix [RFC9780]
    "2001::/23",  # IETF Protocol Assignments [RFC2928] (Teredo 2001::/32 inside it)
    "2001:2::/48",  # Benchmarking [RFC5180]
    "2001:db8::/32",  # Documentation [RFC3849]
    "3fff::/20",  # Documentation [RFC9637]
    "5f00::/16",  # Segment Routing (SRv6) SIDs [RFC9602]
    "fc00::/7",  # Unique-Local [RFC4193] (fd00:ec2::254, the AWS metadata service, inside it)
    "fe80::/10",  # Link-Local Unicast [RFC4291]
    # Not in the special-purpose registries, but never a unicast destination on the Internet:
    "224.0.0.0/4",  # IPv4 multicast [RFC5771]
    "ff00::/8",  # IPv6 multicast [RFC4291]
    "fec0::/10",  # site-local, deprecated [RFC3879]: still routed inside some networks
)

#: rows marked globally reachable (True) inside the blocks above
NONPUBLIC_EXCEPTIONS: tuple[str, ...] = (
    "192.0.0.9/32",  # Port Control Protocol Anycast [RFC7723]
    "192.0.0.10/32",  # Traversal Using Relays around NAT Anycast [RFC8155]
    "2001:1::1/128",  # Port Control Protocol Anycast [RFC7723]
    "2001:1::2/128",  # Traversal Using Relays around NAT Anycast [RFC8155]
    "2001:1::3/128",  # DNS-SD Service Registration Protocol Anycast [RFC9665]
    "2001:3::/32",  # AMT [RFC7450]
    "2001:4:112::/48",  # AS112-v6 [RFC7535]
    "2001:20::/28",  # ORCHIDv2 [RFC7343]
    "2001:30::/28",  # Drone Remote ID Protocol Entity Tags (DETs) Prefix [RFC9374]
)

_V4 = 0xFFFFFFFF
_NAT64 = 0x0064FF9B << 64  # 64:ff9b::/96, as the top 96 bits
_NAT64_LOCAL = 0x0064FF9B0001  # 64:ff9b:1::/48, as the top 48 bits
_6TO4 = 0x2002  # 2002::/16
_TEREDO = 0x20010000  # 2001::/32
_MAPPED = 0xFFFF  # ::ffff:0:0/96
_TRANSLATED = 0xFFFF0000  # ::ffff:0:0:0/96


def embedded_ipv4(x: int) -> tuple[int, ...]:
    """The IPv4 addresses (as integers) the IPv6 address ``x`` (an integer) carries, if any.

    - NAT64, the well-known prefix ``64:ff9b::/96`` [RFC6052]: the last 32 bits;
    - NAT64, the local-use prefix ``64:ff9b:1::/48`` [RFC8215]: the operator picks a prefix
      length of 48, 56, 64 or 96 inside it, and each puts the IPv4 elsewhere (RFC 6052 section
      2.2, skipping bits 64-71): all four readings;
    - 6to4 ``2002::/16`` [RFC3056]: bits 16-47;
    - Teredo ``2001::/32`` [RFC4380]: the server (bits 32-63) and the client, whose address is
      the last 32 bits inverted;
    - IPv4-compatible ``::a.b.c.d`` [RFC4291, deprecated] (not ``::`` nor ``::1``),
      IPv4-mapped ``::ffff:a.b.c.d`` and IPv4-translated ``::ffff:0:a.b.c.d`` [RFC2765].
    """
    top = x >> 32
    if top == _NAT64:
        return (x & _V4,)
    if top == 0:
        return (x,) if x > 1 else ()
    if top == _MAPPED or top == _TRANSLATED:
        return (x & _V4,)
    high = x >> 96
    if high == _TEREDO:
        return ((x >> 64) & _V4, (x & _V4) ^ _V4)
    if x >> 112 == _6TO4:
        return ((x >> 80) & _V4,)
    if x >> 80 == _NAT64_LOCAL:
        return (
            (((x >> 64) & 0xFFFF) << 16) | ((x >> 40) & 0xFFFF),  # /48
            (((x >> 64) & 0xFF) << 24) | ((x >> 32) & 0xFFFFFF),  # /56
            (x >> 24) & _V4,  # /64
            x & _V4,  # /96
        )
    return ()
