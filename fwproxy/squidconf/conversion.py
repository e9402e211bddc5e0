# -*- test-case-name: tests.test_squidconf_convert -*-
"""The conversion: read a squid.conf, hand each directive to the module that translates its
kind, and write fwproxy's TOML with the messages of everything not translated.

:func:`convert` never raises for a bad file: every problem is a message, and those that
change access decisions (or are bad values) are errors, which make the exit status 1 unless
``force`` (then the value or directive is dropped, as the message says).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fwproxy.config import Config
from fwproxy.squidconf import directives as D
from fwproxy.squidconf import emit
from fwproxy.squidconf import values as V
from fwproxy.squidconf.access import Access
from fwproxy.squidconf.acls import Acls
from fwproxy.squidconf.auth import Auth
from fwproxy.squidconf.headers import Headers
from fwproxy.squidconf.logging import Logging
from fwproxy.squidconf.parse import Directive, read_directives
from fwproxy.squidconf.peers import Peers
from fwproxy.squidconf.ports import Ports
from fwproxy.squidconf.proxyproto import ProxyProtocolAccess, localport_notes
from fwproxy.squidconf.report import Report


@dataclass
class Conversion:
    """The result of :func:`convert`: the TOML text, every message (``FILE:LINE: directive:
    ...``), the errors among them, and the exit status (0, or 1 for errors unless forced)."""

    toml: str
    messages: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    exit_code: int = 0


class _Converter:
    def __init__(self, report: Report) -> None:
        self.report = report
        self.acls = Acls(report)
        self.access = Access(self.acls, report)
        self.ports = Ports(report)
        self.logging = Logging(report)
        self.auth = Auth(report)
        self.headers = Headers(report)
        self.peers = Peers(self.acls, report)
        self.proxy_protocol = ProxyProtocolAccess(self.acls, report)
        self.timeouts: dict[str, float] = {}
        self.limits: dict[str, int] = {}
        self.handlers: dict[str, Callable[[Directive], None]] = {
            "acl": self.acls.define,
            "http_access": self.access.http_access,
            "ssl_bump": self.access.ssl_bump,
            "http_port": self.ports.port,
            "proxy_protocol_access": self.proxy_protocol.access,
            "https_port": self.ports.port,
            "access_log": self.logging.access_log,
            "cache_access_log": self.logging.access_log,
            "logformat": self.logging.logformat,
            "auth_param": self.auth.auth_param,
            "cache_peer": self.peers.cache_peer,
            "cache_peer_access": self.peers.peer_access,
            "never_direct": self.peers.direct,
            "always_direct": self.peers.direct,
            "forwarded_for": self.headers.forwarded_for,
            "via": self.headers.via,
            "visible_hostname": self.headers.visible_hostname,
            "request_header_access": self.headers.header_access,
            "reply_header_access": self.headers.header_access,
            "header_access": self.headers.header_access,
            "request_header_add": self.headers.header_add,
        }

    def directive(self, d: Directive) -> None:
        handler = self.handlers.get(d.name)
        if d.name != d.name.lower():
            self.report.skip(
                d,
                "Squid knows its directives in lower case only and ignores this line "
                "('unrecognized'); so does the conversion",
            )
        elif handler is not None:
            handler(d)
        elif d.name in D.TIMEOUTS:
            try:
                self.timeouts[D.TIMEOUTS[d.name]] = V.seconds(d.args)
            except ValueError as e:
                self.report.error(d, str(e))
        elif d.name == "request_body_max_size":
            self._body_size(d)
        elif d.name in D.CACHE:
            self.report.skip(d, "fwproxy does not cache")
        elif d.name in D.PROCESS:
            self.report.skip(d, f"a process setting; with fwproxy: {D.PROCESS[d.name]}")
        elif d.name == "http_reply_access" and d.args == ("allow", "all"):
            self.report.skip(d, "allow all: nothing to translate")
        elif d.name in D.ACCESS:
            self.report.untranslated(d, D.ACCESS[d.name])
        elif d.name in D.KNOWN:
            self.report.skip(d, "no fwproxy equivalent; it changes no access decision")
        else:
            self.report.skip(d, "unknown directive")

    def _body_size(self, d: Directive) -> None:
        """``request_body_max_size N [units] [ACL...]``: ``[limits] max_body_size`` (bytes)."""
        n = 2 if len(d.args) > 1 and d.args[1].lower() in V.SIZE_UNITS else 1
        if d.args[n:]:
            self.report.untranslated(d, "a body limit for some requests only")
            return
        try:
            self.limits["max_body_size"] = V.size(d.args)
        except ValueError as e:
            self.report.error(d, str(e))

    def _intercept(self) -> dict[str, object]:
        """``[intercept]``, when an ``ssl_bump bump`` line was translated."""
        rules = self.access.intercept
        if not any(r.startswith("bump") for r in rules):
            return {}
        first = next(line.where for line in self.access.bump if line.action == "bump")
        squid_ca = f" ({self.ports.bump_cert})" if self.ports.bump_cert else ""
        self.report.note(
            first,
            f'[intercept] ca = "{CA_DIR}" must be a directory made by "fwproxy ca init '
            f"{CA_DIR}\" (clients must then trust its ca.pem). Squid's tls-cert= file"
            f"{squid_ca} is not usable as is: fwproxy reads the CA's certificate and its "
            "unencrypted key from two files, DIR/ca.pem and DIR/ca.key",
        )
        return {"ca": CA_DIR, "rules": rules}

    def toml(self, source: str, guard: bool) -> str:
        names = self.ports.names
        self.access.can_intercept = can_intercept()
        self.access.has_auth = "htpasswd" in self.auth.auth
        if self.ports.seen and not self.ports.bumping:
            for line in self.access.bump:
                self.report.skip(
                    line.where,
                    "no translated http_port has ssl-bump: Squid "
                    "applies ssl_bump to no CONNECT here",
                )
            self.access.bump, self.access.peeks = [], False
        rules = self.access.rules(guard, names)
        routing = self.peers.rules(self.access.words)
        localport_notes(self.report, self.access.used.values(), self.ports.proxied)
        proxy: dict[str, object] = {"listen": self.ports.listen} if self.ports.listen else {}
        senders = self.proxy_protocol.senders(self.ports.proxied, names)
        if senders is not None:
            proxy["proxy_protocol_from"] = senders
        tables: list[tuple[list[str], dict[str, object]]] = []
        tables.append((["proxy"], proxy))
        tables.append((["timeouts"], dict(self.timeouts)))
        tables.append((["limits"], dict(self.limits)))
        if self.access.peeks:
            tables.append((["tunnel"], {"peek_ports": [443]}))
        intercept = self._intercept()
        if intercept:
            tables.append((["intercept"], intercept))
        if self.auth.auth:
            tables.append((["auth"], dict(self.auth.auth)))
        for acl in self.access.used.values():
            fw = self.acls.fw_name(acl)
            if fw in ("all", "to_localhost"):
                continue  # fwproxy's own, with Squid's meaning (other collisions are renamed)
            found = self.acls.table(acl, self.access.peeks, names)
            if found is not None:
                tables.append((["acl", fw], {found[0]: found[1]}))
        for acl in self.access.used_host.values():
            found = self.acls.table(acl, self.access.peeks, names)
            if found is not None:
                tables.append((["acl", self.acls.host_name(acl)], {"dstdomain": found[1]}))
        tables.append((["access"], {"rules": rules}))
        tables.append((["headers"], dict(self.headers.headers)))
        tables.append((["log"], dict(self.logging.log)))
        for name, parent in self.peers.parents.items():
            tables.append((["parents", name], parent))
        tables.append((["routing"], {"rules": routing} if routing else {}))
        header = (
            f"Converted from {source} by fwproxy convert-squid.\n"
            "Check it with: fwproxy check-config FILE"
        )
        return emit.document(header, tables)


#: the ``[intercept] ca`` directory written (relative to the converted file)
CA_DIR = "fwproxy-ca"


def can_intercept() -> bool:
    """Whether this fwproxy has ``[intercept]`` (decrypting tunnels)."""
    return "intercept" in Config.__dataclass_fields__


def convert(path: str, *, force: bool = False, guard: bool = True) -> Conversion:
    """Convert the squid.conf at ``path`` (and the files it includes) to fwproxy's TOML.

    :param force: errors drop the bad value or directive and the exit status stays 0.
    :param guard: put fwproxy's SSRF floor (``deny to_linklocal``, ``deny to_localhost``,
        ``deny to_self``) before the converted rules.
    """
    report = Report(force)
    conv = _Converter(report)
    directives = read_directives(path, report)
    for d in directives:
        try:
            conv.directive(d)
        except Exception as e:  # noqa: BLE001 - a converter bug must not become a traceback
            report.error(d, f"cannot be converted ({type(e).__name__}: {e})")
    if report.fatal_error:
        return Conversion("", report.messages, report.errors, 1)
    try:
        text = conv.toml(path, guard)
    except Exception as e:  # noqa: BLE001 - as above: one line, exit 1
        report.fatal(f"{path}: cannot be converted ({type(e).__name__}: {e})")
        return Conversion("", report.messages, report.errors, 1)
    code = 1 if report.errors and not force else 0
    return Conversion(text, report.messages, report.errors, code)
