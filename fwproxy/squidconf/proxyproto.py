# -*- test-case-name: tests.test_squidconf_proxyproto -*-
"""``proxy_protocol_access`` as ``[proxy] proxy_protocol_from``: who may send a PROXY header.

Squid reads the PROXY header of a ``require-proxy-header`` port only from the peers its
``proxy_protocol_access`` lines allow (first match decides; no line at all: nobody). fwproxy's
key is a list of networks, so only ``allow ACL`` lines with one ``src`` ACL (or ``all``,
``localhost``) translate, into the union of their networks, and a ``deny all`` (after which no
line is reached); any other line decides access and is an error. With a proxied port and no line
the key is ``[]``: nobody may, as in Squid, and a note says so. ``localport`` ACLs used with a
proxied port get a note too: Squid matches the port the header names, fwproxy the listener's.
"""

from __future__ import annotations

from collections.abc import Iterable

from fwproxy.squidconf.access import Term, parse_terms
from fwproxy.squidconf.acls import AclDef, Acls
from fwproxy.squidconf.parse import Directive
from fwproxy.squidconf.report import Report

_EVERYONE = {"0.0.0.0/0", "::/0"}


class ProxyProtocolAccess:
    """The ``proxy_protocol_access`` lines of a squid.conf."""

    def __init__(self, acls: Acls, report: Report) -> None:
        self.acls = acls
        self.report = report
        self.lines: list[tuple[Directive, str, list[Term]]] = []

    def access(self, d: Directive) -> None:
        """One ``proxy_protocol_access allow|deny [!]ACL...`` line."""
        if not d.args or d.args[0] not in ("allow", "deny"):
            self.report.error(d, "expected allow or deny, then ACL names")
            return
        terms = parse_terms(d, d.args[1:], self.acls, self.report)
        if terms is not None:
            self.lines.append((d, d.args[0], terms))

    def senders(self, proxied: list[Directive], port_names: dict[str, int]) -> list[str] | None:
        """``proxy_protocol_from``'s networks (``[]``: nobody), or None when no port reads a
        PROXY header (then the lines change nothing)."""
        if not proxied:
            for d, _, _ in self.lines:
                self.report.skip(d, "no http_port has require-proxy-header")
            return None
        if not self.lines:
            self.report.note(
                proxied[0],
                "require-proxy-header, and no proxy_protocol_access line: Squid lets no peer "
                "send a PROXY header (every connection to this port is refused); so does the "
                "converted proxy_protocol_from = []: list the balancers' addresses there",
            )
            return []
        networks: list[str] = []
        ended: Directive | None = None
        for d, action, terms in self.lines:
            if ended is not None:
                self.report.note(d, f"never reached: the deny all on {ended.where} decides first")
                continue
            single = terms[0][0] if len(terms) == 1 and not terms[0][1] else None
            found = self._networks(single, port_names) if single is not None else None
            if action == "deny" and found is not None and _EVERYONE <= set(found):
                ended = d
            elif action == "deny":
                self.report.untranslated(
                    d,
                    "proxy_protocol_from lists who may send the header: only 'deny all' "
                    "(the default after allow lines) translates",
                )
            elif found is None:
                self.report.untranslated(
                    d,
                    "proxy_protocol_from takes source networks: only 'allow ACL' with one "
                    "src ACL (or all, localhost) translates",
                )
            else:
                networks.extend(found)
        return list(dict.fromkeys(networks))

    def _networks(self, acl: AclDef, port_names: dict[str, int]) -> list[str] | None:
        if acl.kind != "src":
            return None
        table = self.acls.table(acl, False, port_names)
        return None if table is None else [str(v) for v in table[1]]


def localport_notes(report: Report, used: Iterable[AclDef], proxied: list[Directive]) -> None:
    """A note on each ``localport``/``myport`` ACL the rules use when a port reads a PROXY
    header: Squid matches the destination port the header names, fwproxy the listener's port."""
    if not proxied:
        return
    for acl in used:
        if acl.squid_type in ("localport", "myport") and acl.where is not None:
            report.note(
                acl.where,
                f"acl {acl.name}: on a require-proxy-header port Squid matches {acl.squid_type} "
                "against the port the PROXY header names; fwproxy's localport is the port of "
                "the listener the connection came to",
            )
