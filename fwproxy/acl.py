# -*- test-case-name: tests.test_acl -*-
"""Access control lists and rules with squid's semantics, sans-IO.

Named ACLs, each of one type, and an ordered list of rules ``allow|deny NAME [!NAME ...]``:
the first rule whose ACLs all match decides; no match means deny. Types: ``src``, ``dst``,
``dstdomain``, ``port``, ``localport``, ``method``, ``time``, ``proxy_auth``, ``client_cert``,
``ssl_sni``, and the regular-expression types of :mod:`fwproxy.acl_regex` (``dstdom_regex``,
``url_regex``, ``urlpath_regex``); what they are built on is in :mod:`fwproxy.acl_base`, and this
module exports it all.
Predefined: ``all``, and the destination sets ``to_localhost``, ``to_linklocal``, ``to_self``,
``to_private``, ``to_nonpublic`` (every IANA special-purpose range that is not globally
reachable); ``dst`` and these match an IPv6 address that carries an IPv4 one (NAT64, 6to4,
Teredo) by that IPv4 address too.

Parsing turns configuration values into matchers once, raising :class:`AclError` naming the bad
value; matching is then pure: :meth:`fwproxy.rules.AccessPolicy.check` takes an :class:`AclContext`. A ``dst``
ACL needs the destination's resolved addresses: when a rule reaches one before they are known,
``check`` raises :class:`NeedAddresses` so the caller can resolve and ask again. Likewise an
``ssl_sni`` ACL reached while a peeked tunnel's ClientHello is still to come raises
:class:`NeedSni`: the caller lets the tunnel reach its ClientHello and asks again then.
"""

from __future__ import annotations

import ipaddress
import re
import time as _time
from collections.abc import Iterable, Sequence

from fwproxy.acl_base import CLIENT_CERT_NOTE as CLIENT_CERT_NOTE
from fwproxy.acl_base import Acl as Acl
from fwproxy.acl_base import AclContext as AclContext
from fwproxy.acl_base import AclError as AclError
from fwproxy.acl_base import ClientCert as ClientCert
from fwproxy.acl_base import NeedAddresses as NeedAddresses
from fwproxy.acl_base import NeedCredentials as NeedCredentials
from fwproxy.acl_base import NeedSni as NeedSni
from fwproxy.acl_base import client_ip as client_ip
from fwproxy.acl_base import strings
from fwproxy.acl_regex import DstDomRegexAcl as DstDomRegexAcl
from fwproxy.acl_regex import UrlPathRegexAcl as UrlPathRegexAcl
from fwproxy.acl_regex import UrlRegexAcl as UrlRegexAcl
from fwproxy.selfcheck import IPAddress, all_self
from fwproxy.special_addresses import NONPUBLIC, NONPUBLIC_EXCEPTIONS, embedded_ipv4

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(name: str, kind: str, values: object) -> tuple[IPNetwork, ...]:
    nets = []
    for v in strings(name, kind, values):
        try:
            nets.append(ipaddress.ip_network(v, strict=False))
        except ValueError:
            raise AclError(
                f"acl.{name}.{kind}: {v!r} is not an IP address or CIDR network"
            ) from None
    return tuple(nets)


class NetworkSet:
    """Networks compiled to ``(address, mask)`` integers: membership in a few integer
    operations instead of ``ipaddress``'s property look-ups (this is on every request).
    ``exceptions`` are networks inside them that are not members (``to_nonpublic``'s globally
    reachable rows)."""

    __slots__ = ("networks", "exceptions", "_v4", "_v6", "_x4", "_x6")

    def __init__(self, networks: Sequence[IPNetwork], exceptions: Sequence[IPNetwork] = ()) -> None:
        self.networks = tuple(networks)
        self.exceptions = tuple(exceptions)
        self._v4, self._v6 = _compiled(self.networks)
        self._x4, self._x6 = _compiled(self.exceptions)

    def __contains__(self, ip: IPAddress) -> bool:
        if ip.version == 4:
            return self._has(int(ip), self._v4, self._x4)
        return self._has(int(ip), self._v6, self._x6)

    @staticmethod
    def _has(
        x: int, nets: tuple[tuple[int, int], ...], exceptions: tuple[tuple[int, int], ...]
    ) -> bool:
        for net, mask in nets:
            if x & mask == net:
                return not any(x & m == n for n, m in exceptions)
        return False

    def holds_destination(self, ip: IPAddress) -> bool:
        """Membership for a destination: an IPv6 address that carries an IPv4 one (NAT64,
        6to4, Teredo, IPv4-compatible: :func:`fwproxy.special_addresses.embedded_ipv4`) is
        also a member when that IPv4 address is. Never for sources: a client does not choose
        where its packets go by the bits of its own address."""
        x = int(ip)
        if ip.version == 4:
            return self._has(x, self._v4, self._x4)
        if self._has(x, self._v6, self._x6):
            return True
        return any(self._has(v4, self._v4, self._x4) for v4 in embedded_ipv4(x))


def _compiled(networks: Sequence[IPNetwork]) -> tuple[tuple[tuple[int, int], ...], ...]:
    """``(IPv4, IPv6)`` networks as ``(address, mask)`` integer pairs."""
    return tuple(
        tuple((int(n.network_address), int(n.netmask)) for n in networks if n.version == v)
        for v in (4, 6)
    )


class _NetworkAcl:
    """Mixin: ``networks`` kept compiled in ``self._set``."""

    _set: NetworkSet

    @property
    def networks(self) -> tuple[IPNetwork, ...]:
        return self._set.networks

    @networks.setter
    def networks(self, value: Sequence[IPNetwork]) -> None:
        self._set = NetworkSet(value)


class AllAcl(Acl):
    kind = "all"

    def match(self, ctx: AclContext) -> bool:
        return True


class SrcAcl(_NetworkAcl, Acl):
    kind = "src"

    def __init__(self, name: str, values: object) -> None:
        super().__init__(name)
        self.networks = _networks(name, self.kind, values)

    def match(self, ctx: AclContext) -> bool:
        return ctx.client is not None and ctx.client in self._set


class DstAcl(_NetworkAcl, Acl):
    """Matches when the destination's resolved addresses are all in the networks."""

    kind = "dst"
    needs_addresses = True

    def __init__(self, name: str, values: object) -> None:
        super().__init__(name)
        self.networks = _networks(name, self.kind, values) if values is not None else ()

    def match(self, ctx: AclContext) -> bool:
        if ctx.addresses is None:
            raise NeedAddresses(self.name)
        held = self._set.holds_destination
        return bool(ctx.addresses) and all(held(a) for a in ctx.addresses)


def _domains(
    name: str, kind: str, values: object, what: str, spaces: bool = False
) -> tuple[frozenset[str], tuple[str, ...]]:
    """``dstdomain``-style names: ``(exact names, ".suffixes")`` — ``.example.com`` stands for
    example.com and every subdomain; lower case, no trailing dot, no blanks (with ``spaces``:
    inner spaces allowed, as in a certificate's common name; never line breaks or tabs)."""
    exact, suffixes = set(), []
    for v in strings(name, kind, values):
        d = v.strip().lower().rstrip(".")
        if not d or d == "." or any(c.isspace() and (c != " " or not spaces) for c in d):
            raise AclError(f"acl.{name}.{kind}: {v!r} is not {what}")
        if d.startswith("."):
            exact.add(d[1:])
            suffixes.append(d)
        else:
            exact.add(d)
    return frozenset(exact), tuple(suffixes)


class DstDomainAcl(Acl):
    kind = "dstdomain"

    def __init__(self, name: str, values: object) -> None:
        super().__init__(name)
        self.exact, self.suffixes = _domains(name, self.kind, values, "a domain")

    def match(self, ctx: AclContext) -> bool:
        host = ctx.host.lower().rstrip(".")
        return host in self.exact or host.endswith(self.suffixes)


def _port_ranges(name: str, kind: str, values: object) -> tuple[tuple[int, int], ...]:
    """``port``-style values: numbers and ``low-high`` ranges, as ``(low, high)`` pairs."""
    ranges = []
    for v in strings(name, kind, values):
        lo_s, sep, hi_s = v.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
        except ValueError:
            raise AclError(
                f'acl.{name}.{kind}: {v!r} is not a port or range like "1025-65535"'
            ) from None
        if not (1 <= lo <= hi <= 65535):
            raise AclError(f"acl.{name}.{kind}: {v!r} is out of range (1-65535, low-high)")
        ranges.append((lo, hi))
    return tuple(ranges)


class PortAcl(Acl):
    """The destination port."""

    kind = "port"

    def __init__(self, name: str, values: object) -> None:
        super().__init__(name)
        self.ranges = _port_ranges(name, self.kind, values)

    def match(self, ctx: AclContext) -> bool:
        p = ctx.port
        return any(lo <= p <= hi for lo, hi in self.ranges)


class LocalPortAcl(PortAcl):
    """Squid's ``localport``: the proxy's own port the client connected to (the listener's,
    also behind a PROXY-protocol listener, whose header names another)."""

    kind = "localport"

    def match(self, ctx: AclContext) -> bool:
        p = ctx.local_port
        return any(lo <= p <= hi for lo, hi in self.ranges)


_METHOD = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class MethodAcl(Acl):
    kind = "method"

    def __init__(self, name: str, values: object) -> None:
        super().__init__(name)
        methods = set()
        for v in strings(name, self.kind, values):
            if not _METHOD.match(v):
                raise AclError(f"acl.{name}.method: {v!r} is not an HTTP method")
            methods.add(v.upper())
        self.methods = frozenset(methods)

    def match(self, ctx: AclContext) -> bool:
        return ctx.method.upper() in self.methods


_DAYS = "SMTWHFA"  # squid's letters, Sunday first
_TIME = re.compile(r"^(?:([SMTWHFA]+)\s*)?(?:(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2}))?$")


class TimeAcl(Acl):
    """squid's ``time``: ``"MTWHF 08:00-18:00"``, ``"AS"``, ``"22:00-06:00"`` (wraps midnight)."""

    kind = "time"

    def __init__(self, name: str, values: object) -> None:
        super().__init__(name)
        specs = []
        for v in strings(name, self.kind, values):
            m = _TIME.match(v.strip())
            if not m or not (m.group(1) or m.group(2)):
                raise AclError(
                    f'acl.{name}.time: {v!r} is not like "MTWHF 09:00-17:00" '
                    "(days S M T W H F A, then hh:mm-hh:mm)"
                )
            days = frozenset(_DAYS.index(c) for c in m.group(1)) if m.group(1) else None
            if m.group(2):
                h1, m1, h2, m2 = (int(m.group(i)) for i in range(2, 6))
                if h1 > 24 or h2 > 24 or m1 > 59 or m2 > 59:
                    raise AclError(f"acl.{name}.time: {v!r} has an invalid time of day")
                window = (h1 * 60 + m1, h2 * 60 + m2)
            else:
                window = None
            specs.append((days, window))
        self.specs = tuple(specs)

    def match(self, ctx: AclContext) -> bool:
        if ctx.utcoffset is None:
            t = _time.localtime(ctx.now)
        else:
            t = _time.gmtime(ctx.now + ctx.utcoffset)
        day = (t.tm_wday + 1) % 7  # tm_wday: Monday is 0; squid's list starts on Sunday
        minute = t.tm_hour * 60 + t.tm_min
        for days, window in self.specs:
            if days is not None and day not in days:
                continue
            if window is None:
                return True
            lo, hi = window
            if lo <= hi:
                if lo <= minute < hi:
                    return True
            elif minute >= lo or minute < hi:
                return True
        return False


class ProxyAuthAcl(Acl):
    """Matches authenticated users by name; ``["REQUIRED"]`` matches any authenticated user."""

    kind = "proxy_auth"

    def __init__(self, name: str, values: object) -> None:
        super().__init__(name)
        users = strings(name, self.kind, values)
        self.any_user = "REQUIRED" in users
        self.users = frozenset(u for u in users if u != "REQUIRED")

    def match(self, ctx: AclContext) -> bool:
        if ctx.auth_pending:
            raise NeedCredentials(self.name)
        return bool(ctx.user) and (self.any_user or ctx.user in self.users)


class ClientCertAcl(Acl):
    """Matches a verified client certificate by its subject CN or SAN DNS names, written as
    ``dstdomain`` values (``.example.com``: the domain and its subdomains); never a connection
    without one (a plain listener, or no certificate sent)."""

    kind = "client_cert"

    def __init__(self, name: str, values: object) -> None:
        super().__init__(name)
        self.exact, self.suffixes = _domains(
            name, self.kind, values, "a certificate name", spaces=True
        )

    def match(self, ctx: AclContext) -> bool:
        cert = ctx.client_cert
        if cert is None:
            return False
        return any(n in self.exact or n.endswith(self.suffixes) for n in cert.names)


ACL_TYPES: dict[str, type[Acl]] = {
    cls.kind: cls
    for cls in (
        SrcAcl,
        DstAcl,
        DstDomainAcl,
        DstDomRegexAcl,
        PortAcl,
        LocalPortAcl,
        MethodAcl,
        UrlRegexAcl,
        UrlPathRegexAcl,
        TimeAcl,
        ProxyAuthAcl,
        ClientCertAcl,
    )
}


class SelfAcl(Acl):
    """``to_self``: destinations that are this proxy: its listening addresses (for a listener
    on every interface, ``0.0.0.0``/``::``, the loopback and unspecified addresses)."""

    kind = "dst"
    needs_addresses = True

    def match(self, ctx: AclContext) -> bool:
        if ctx.addresses is None:
            raise NeedAddresses(self.name)
        return all_self(ctx.addresses, None, ctx.listening)


def _predefined_dst(name: str, nets: Iterable[str]) -> DstAcl:
    acl = DstAcl(name, None)
    acl.networks = tuple(ipaddress.ip_network(n) for n in nets)
    return acl


def predefined() -> dict[str, Acl]:
    """ACLs every configuration has, like squid's ``all``. The destination sets (the names
    in :data:`PREDEFINED_DESTINATIONS`) check an IPv6 address that carries an IPv4 one as that
    IPv4 address too (see :meth:`NetworkSet.holds_destination`)."""
    nonpublic = DstAcl("to_nonpublic", None)
    nonpublic._set = NetworkSet(
        [ipaddress.ip_network(n) for n in NONPUBLIC],
        [ipaddress.ip_network(n) for n in NONPUBLIC_EXCEPTIONS],
    )
    return {
        "all": AllAcl("all"),
        "to_localhost": _predefined_dst(
            "to_localhost", ["127.0.0.0/8", "::1/128", "0.0.0.0/32", "::/128"]
        ),
        "to_linklocal": _predefined_dst(
            "to_linklocal", ["169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128"]
        ),
        "to_self": SelfAcl("to_self"),
        "to_private": _predefined_dst(
            "to_private",
            ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"],
        ),
        "to_nonpublic": nonpublic,
    }


#: the predefined destination ACLs: a rule that denies by one of them stays enforced in
#: report-only mode (``[access] mode = "report"``)
PREDEFINED_DESTINATIONS = frozenset(
    ("to_localhost", "to_linklocal", "to_self", "to_private", "to_nonpublic")
)


def make_acl(name: str, kind: str, values: object) -> Acl:
    """Build the ACL ``name`` of type ``kind`` from its configured values."""
    cls = ACL_TYPES.get(kind)
    if cls is None:
        raise AclError(f"acl.{name}: unknown type {kind!r} (one of {', '.join(sorted(ACL_TYPES))})")
    return cls(name, values)  # type: ignore[call-arg]


#: ``Request.notes`` keys: a peeked tunnel's server name ("" if none), for ``ssl_sni`` ACLs;
#: True when the rules postponed a CONNECT to its ClientHello (see :mod:`fwproxy.peek`)
SNI_NOTE, SNI_POSTPONED = "fwproxy.sni", "fwproxy.sni_postponed"


class SslSniAcl(DstDomainAcl):
    """``ssl_sni``: a peeked tunnel's ClientHello server name, with ``dstdomain``'s values. Never
    matches a relayed request, nor a hello without a name; raises :class:`NeedSni` before the
    ClientHello (``ctx.sni_pending``): the rule is decided when it arrives."""

    kind = "ssl_sni"

    def match(self, ctx: AclContext) -> bool:
        if ctx.sni_pending:
            raise NeedSni(self.name)
        sni = (ctx.sni or "").lower().rstrip(".")
        return bool(sni) and (sni in self.exact or sni.endswith(self.suffixes))


ACL_TYPES[SslSniAcl.kind] = SslSniAcl
