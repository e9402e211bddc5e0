# -*- test-case-name: tests.test_squidconf_acls -*-
"""Squid's ``acl`` lines as fwproxy ``[acl.NAME]`` tables.

Squid's ACL names are case-insensitive (``Safe_ports`` and ``safe_ports`` are one ACL, written
as it was first spelled); repeated lines of one name accumulate, and a line of another type
for an existing name is an error, as in Squid. Squid's built-ins (``all``, ``localhost``,
``to_localhost``, ``manager``, ``CONNECT``; Squid 5's definitions) exist before the file and
lines of theirs add to them. A name fwproxy predefines with another meaning, or that fwproxy
does not accept, is renamed ``squid_NAME`` everywhere. Types fwproxy has no equivalent of are
kept as untranslatable: a rule that uses one is reported where it is used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from fwproxy.acl import predefined
from fwproxy.squidconf import values as V
from fwproxy.squidconf.parse import Directive, expand_values
from fwproxy.squidconf.report import Report

#: Squid 5.7's built-in ACLs (cf.data.pre's DEFAULT lines), as (type, values)
BUILTINS: dict[str, tuple[str, list[str]]] = {
    "all": ("src", ["all"]),
    "manager": (
        "url_regex",
        ["-i", "^cache_object://", "+i", "^[^:]+://[^/]+/squid-internal-mgr/"],
    ),
    "localhost": ("src", ["127.0.0.1/32", "::1"]),
    "to_localhost": ("dst", ["127.0.0.0/8", "0.0.0.0/32", "::1/128", "::/128"]),
    "CONNECT": ("method", ["CONNECT"]),
}

#: Squid types fwproxy has, and their fwproxy names
_SAME = {
    "src": "src",
    "dst": "dst",
    "dstdomain": "dstdomain",
    "dstdom_regex": "dstdom_regex",
    "url_regex": "url_regex",
    "urlpath_regex": "urlpath_regex",
    "port": "port",
    "localport": "localport",
    "myport": "localport",
    "method": "method",
    "proxy_auth": "proxy_auth",
    "time": "time",
    "ssl::server_name": "ssl::server_name",  # ssl_sni or dstdomain: decided at the end
    "myportname": "myportname",  # localport, once the http_port names are known
    "at_step": "at_step",  # only for ssl_bump
}
#: every ACL type Squid 5.7 knows (others stop Squid: "FATAL: Invalid ACL type")
SQUID_TYPES = frozenset(
    """adaptation_service all-of annotate_client annotate_transaction any-of arp at_step
    browser ca_cert client_connection_mark clientside_mark connections_encrypted dst dst_as
    dstdom_regex dstdomain eui64 ext_user ext_user_regex external has hier_code http_status
    ident ident_regex localip localport max_user_ip maxconn method myportname note peername
    peername_regex port proto proxy_auth proxy_auth_regex random referer_regex rep_header
    rep_mime_type req_header req_mime_type server_cert_fingerprint snmp_community squid_error
    src src_as srcdom_regex srcdomain ssl::server_name ssl::server_name_regex ssl_error tag
    time transaction_initiator url_regex urllogin urlpath_regex user_cert myip myport""".split()
)
_FWPROXY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_FLAG = re.compile(r"^[-+][a-zA-Z]$|^--[a-z-]+$")


@dataclass
class AclDef:
    """One Squid ACL: its first spelling, its Squid type, fwproxy's type for it (None: none),
    its values (Squid's tokens, files read) and where it was first defined."""

    name: str
    squid_type: str
    kind: str | None
    where: Directive | None
    values: list[str] = field(default_factory=list)
    #: regular expressions that ignore case (``-i``), by position in ``values``
    nocase: list[bool] = field(default_factory=list)
    builtin: bool = False
    #: the name in the converted file
    fw_name: str = ""
    #: the name of its ``dstdomain`` twin (``ssl::server_name`` outside ``ssl_bump``)
    host_name: str = ""
    #: the converted table, once made (its problems are reported once)
    converted: tuple[str, list[str | int]] | None = None
    done: bool = False


class Acls:
    """The ACLs of one squid.conf, by lower-case name."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.defs: dict[str, AclDef] = {}
        for name, (kind, vals) in BUILTINS.items():
            acl = AclDef(name, kind, _SAME[kind], None, builtin=True)
            self._add_values(acl, vals, None)
            self.defs[name.lower()] = acl
        self._taken = set(predefined())

    def define(self, d: Directive) -> None:
        """One ``acl NAME TYPE [flags] VALUE...`` line."""
        if len(d.args) < 2:
            self.report.error(d, "expected acl NAME TYPE VALUE...")
            return
        name, squid_type = d.args[0], d.args[1]
        key = name.lower()
        if squid_type == "proto" and key == "manager":
            self.report.note(d, "ignored, as Squid does ('manager' is a built-in ACL)")
            return
        if squid_type not in SQUID_TYPES:
            self.report.error(d, f"{squid_type!r} is not an ACL type (Squid refuses to start)")
            return
        kind = _SAME.get(squid_type)
        acl = self.defs.get(key)
        if acl is None:
            acl = AclDef(name, squid_type, kind, d)
            self.defs[key] = acl
        elif _SAME.get(acl.squid_type, acl.squid_type) != _SAME.get(squid_type, squid_type):
            self.report.error(
                d, f"ACL {name!r} already exists with another type ({acl.squid_type})"
            )
            return
        elif acl.builtin and acl.where is None:
            acl.where = d
        tokens = expand_values(list(d.args[2:]), d, self.report)
        if kind is None:
            return  # untranslatable: reported where a rule uses it
        if kind == "time":  # one line is one window: "MTWHF 08:00-17:00"
            acl.values.append(" ".join(t for t in tokens if not _FLAG.match(t)))
            acl.nocase.append(False)
            return
        if not [t for t in tokens if not _FLAG.match(t)]:
            self.report.note(d, f"ACL {name!r} has no values here (Squid: empty ACL)")
        self._add_values(acl, tokens, d)

    def _add_values(self, acl: AclDef, tokens: list[str], d: Directive | None) -> None:
        nocase = False
        for t in tokens:
            if _FLAG.match(t):
                if t == "-i":
                    nocase = True
                elif t == "+i":
                    nocase = False
                elif d is not None and t not in ("-n", "--"):
                    self.report.note(d, f"flag {t} ignored")
                continue
            acl.values.append(t)
            acl.nocase.append(nocase)

    def lookup(self, name: str) -> AclDef | None:
        key = name.lower()
        if key == "to_linklocal" and key not in self.defs:
            # Squid 6's built-in (Squid 5 has none): used, never defined in the file
            acl = AclDef("to_linklocal", "dst", "dst", None, builtin=True)
            self._add_values(acl, ["169.254.0.0/16", "fe80::/10"], None)
            self.defs[key] = acl
        return self.defs.get(key)

    def fw_name(self, acl: AclDef) -> str:
        """The name ``acl`` has in the converted file (chosen once)."""
        if acl.fw_name:
            return acl.fw_name
        if acl.builtin and acl.name == "all":
            acl.fw_name = "all"
            return "all"
        if acl.builtin and acl.name == "to_localhost" and _only_localhost(acl.values):
            # fwproxy's is Squid's set exactly (Squid 3's files define it again: same set)
            acl.fw_name = "to_localhost"
            return acl.fw_name
        name = acl.name
        if name in self._taken or not _FWPROXY_NAME.match(name):
            name = "squid_" + re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        base, i = name, 2
        while name in self._taken:
            name, i = f"{base}_{i}", i + 1
        self._taken.add(name)
        acl.fw_name = name
        return name

    def host_name(self, acl: AclDef) -> str:
        """The name of the ``dstdomain`` twin of an ``ssl::server_name`` ACL (chosen once)."""
        if not acl.host_name:
            name = base = self.fw_name(acl) + "_host"
            i = 2
            while name in self._taken:
                name, i = f"{base}_{i}", i + 1
            self._taken.add(name)
            acl.host_name = name
        return acl.host_name

    def table(
        self, acl: AclDef, peeks: bool, port_names: dict[str, int]
    ) -> tuple[str, list[str | int]] | None:
        """``(fwproxy type, values)`` of one ACL a rule uses, or None when it has no fwproxy
        equivalent or no valid value (each bad value is reported, once)."""
        if not acl.done:
            acl.converted = self._table(acl, peeks, port_names)
            acl.done = True
        return acl.converted

    def _table(
        self, acl: AclDef, peeks: bool, port_names: dict[str, int]
    ) -> tuple[str, list[str | int]] | None:
        d = acl.where
        kind = acl.kind
        out: list[str | int] = []

        def bad(text: str) -> None:
            if d is not None:
                self.report.error(d, f"acl {acl.name}: {text}")

        for value, nocase in zip(acl.values, acl.nocase, strict=True):
            try:
                out.extend(self._value(acl, value, nocase, port_names, d))
            except ValueError as e:
                bad(str(e))
        if kind in ("src", "dst") and any(v in ("0.0.0.0/0", "::/0") for v in out):
            out = [v for v in out if v in ("0.0.0.0/0", "::/0")]
        if kind == "ssl::server_name":
            kind = "ssl_sni" if peeks else "dstdomain"
        elif kind == "myportname":
            kind = "localport"
        if not out or kind is None:
            return None
        return kind, list(dict.fromkeys(out))

    def _value(
        self, acl: AclDef, value: str, nocase: bool, port_names: dict[str, int], d: Directive | None
    ) -> list[str | int]:
        kind = acl.kind
        if kind in ("src", "dst"):
            if not V.is_address_like(value):
                raise ValueError(
                    f"{value!r} is not an IP address or network (a host name there is "
                    "resolved by Squid once, at start-up: write its addresses instead)"
                )
            nets, note = V.networks(value)
            if note and d is not None:
                self.report.note(d, note)
            return list(nets)
        if kind in ("url_regex", "urlpath_regex"):
            return [V.regex(value, nocase)]
        if kind == "dstdom_regex":
            if not nocase and any(c.isupper() for c in value.replace("\\", "")) and d is not None:
                self.report.note(
                    d,
                    f"{value!r}: Squid matches it case-sensitively against the lower-case host "
                    "name; fwproxy's dstdom_regex ignores case",
                )
            return [V.regex(value, False)]
        if kind in ("port", "localport"):
            lo, dash, hi = value.partition("-")
            if not lo.isdigit() or (dash and not hi.isdigit()) or not 0 < int(lo) <= 65535:
                raise ValueError(f"{value!r} is not a port or a range like 1025-65535")
            if dash and not int(lo) <= int(hi) <= 65535:
                raise ValueError(f"{value!r} is not a range of ports")
            return [int(value) if not dash else value]
        if kind == "myportname":
            if value not in port_names:
                raise ValueError(f"no http_port has name={value}")
            return [port_names[value]]
        if kind == "time":
            return [V.time_spec(value.split())]
        if kind == "proxy_auth" and nocase and d is not None:
            self.report.note(d, "-i: fwproxy compares user names exactly")
        if kind in ("dstdomain", "ssl::server_name"):
            if value.startswith("-") or not value.strip("."):
                raise ValueError(f"{value!r} is not a domain")
        return [value]


def _only_localhost(values: list[str]) -> bool:
    """Whether ``dst`` values are all inside Squid's (and fwproxy's) ``to_localhost``."""
    builtin = set(BUILTINS["to_localhost"][1])
    try:
        return all(set(V.networks(v)[0]) <= builtin for v in values)
    except ValueError:
        return False
