# -*- test-case-name: tests.test_squidconf_access -*-
"""``http_access`` and ``ssl_bump`` as fwproxy's ``[access] rules``, deciding as Squid does.

Squid's first matching ``http_access`` line decides; when none matches, the opposite of the
last line's action does (no line at all: deny): that rule is written out. Before them, unless
``guard`` is off, fwproxy's SSRF floor. ``ssl_bump`` (the peek-and-splice pattern: ``peek
step1``, then ``splice``/``terminate``) is decided on the TLS server name after Squid has
allowed the CONNECT: its ``terminate`` becomes ``deny`` rules placed just before each ``allow``
rule and restricted by that rule's own ACLs, so that a CONNECT Squid refuses with ``403`` is
refused by fwproxy on its CONNECT line as well, and one Squid terminates is refused on its
ClientHello. ``bump`` and ``splice`` lines become ``[intercept] rules`` where this fwproxy has
interception (an error otherwise).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from fwproxy.squidconf.acls import AclDef, Acls
from fwproxy.squidconf.parse import Directive
from fwproxy.squidconf.report import Report

#: fwproxy's SSRF floor, first in the converted rules unless --no-guard
FLOOR = ("deny to_linklocal", "deny to_localhost", "deny to_self")

#: ``ssl_bump`` actions of Squid 3.x and their current names
_OLD_ACTIONS = {"none": "splice", "client-first": "bump", "server-first": "bump"}
_ACTIONS = {"peek", "stare", "splice", "bump", "terminate"}
#: how many ``deny`` rules one ``terminate`` may become (negating earlier lines multiplies)
MAX_EXPANSION = 256

Term = tuple[AclDef, bool]


@dataclass
class Line:
    """One ``http_access``/``ssl_bump`` line: its action, its ACL terms, where it is."""

    action: str
    terms: list[Term]
    where: Directive
    broken: bool = False


def parse_terms(
    d: Directive, words: tuple[str, ...], acls: Acls, report: Report
) -> list[Term] | None:
    """``[!]NAME...`` as terms; None (reported) when a name is not defined."""
    terms: list[Term] = []
    for w in words:
        neg = w.startswith("!")
        acl = acls.lookup(w[1:] if neg else w)
        if acl is None:
            report.error(d, f"ACL {w.lstrip('!')!r} is not defined (Squid refuses to start)")
            return None
        terms.append((acl, neg))
    return terms


class Access:
    """Collects the access lines of a squid.conf, then writes fwproxy's rules."""

    def __init__(self, acls: Acls, report: Report) -> None:
        self.acls = acls
        self.report = report
        self.http: list[Line] = []
        self.bump: list[Line] = []
        #: the file peeks at TLS (``ssl_bump peek``/``stare``): server names are SNI
        self.peeks = False
        #: ACLs the rules use, in order
        self.used: dict[str, AclDef] = {}
        #: ``ssl::server_name`` ACLs used where Squid matches the CONNECT host (peeking files)
        self.used_host: dict[str, AclDef] = {}
        #: this fwproxy has ``[intercept]`` (bumping): ``ssl_bump bump`` is translated
        self.can_intercept = False
        #: an ``[auth]`` table was translated (``proxy_auth`` ACLs need one)
        self.has_auth = False
        #: the ``[intercept] rules`` (filled by :meth:`rules` when there is a bump line)
        self.intercept: list[str] = []

    def http_access(self, d: Directive) -> None:
        if not d.args or d.args[0] not in ("allow", "deny"):
            self.report.error(d, "expected allow or deny, then ACL names")
            return
        if len(d.args) == 1:
            self.report.skip(d, "no ACL: Squid skips the line, and so does the conversion")
            return
        terms = parse_terms(d, d.args[1:], self.acls, self.report)
        # a broken line is left out, but its action still sets Squid's default
        self.http.append(Line(d.args[0], terms or [], d, broken=terms is None))

    def ssl_bump(self, d: Directive) -> None:
        action = _OLD_ACTIONS.get(d.args[0], d.args[0]) if d.args else ""
        if action not in _ACTIONS:
            self.report.untranslated(d, f"unknown ssl_bump action {' '.join(d.args[:1])!r}")
            return
        if action != d.args[0]:
            self.report.note(d, f"Squid 3's {d.args[0]!r} read as {action!r}")
        terms = parse_terms(d, d.args[1:], self.acls, self.report)
        if terms is None:
            return
        if action in ("peek", "stare"):
            self.peeks = True
        self.bump.append(Line(action, terms, d))

    # -- writing ---------------------------------------------------------------------------

    def _usable(self, terms: list[Term], d: Directive, port_names: dict[str, int]) -> bool:
        """Whether every ACL of ``terms`` has an fwproxy equivalent (each one that has not is
        reported as an untranslated access decision)."""
        ok = True
        for acl, _ in terms:
            if acl.kind is None or acl.kind == "at_step":
                what = "an ssl_bump step" if acl.kind else f"Squid's {acl.squid_type!r} ACL type"
                self.report.untranslated(
                    d, f"ACL {acl.name!r} is {what}, which fwproxy has no equivalent of"
                )
                ok = False
            elif acl.kind == "proxy_auth" and not self.has_auth:
                self.report.untranslated(
                    d, f"ACL {acl.name!r} is proxy_auth, and no auth_param basic was translated"
                )
                ok = False
            elif self.acls.table(acl, self.peeks, port_names) is None:
                self.report.untranslated(d, f"ACL {acl.name!r} has no valid value")
                ok = False
        return ok

    def words(self, start: str, terms: list[Term], sni: bool = False) -> str:
        """A rule: ``start`` (``allow``, ``parent NAME``, ``bump``...) and the fwproxy names
        of its ACLs (``all`` for none); the ACLs are remembered as used.

        With ``sni`` the terms are ``ssl_bump``'s, decided on the ClientHello; without, an
        ``ssl::server_name`` ACL of a peeking file stands for what Squid matches there, the
        CONNECT's host: its ``dstdomain`` twin (``NAME_host``)."""
        words = []
        for acl, neg in terms:
            if acl.kind == "ssl::server_name" and self.peeks and not sni:
                self.used_host.setdefault(acl.name.lower(), acl)
                name = self.acls.host_name(acl)
            else:
                self.used.setdefault(acl.name.lower(), acl)
                name = self.acls.fw_name(acl)
            words.append(("!" if neg else "") + name)
        if not start:
            return " ".join(words)
        return " ".join([start, *(words or ["all"])])

    def _text(self, allow: bool, terms: list[Term]) -> str:
        return self.words("allow" if allow else "deny", terms)

    def rules(self, guard: bool, port_names: dict[str, int]) -> list[str]:
        """fwproxy's ``[access] rules``, the floor first (``guard``)."""
        out = list(FLOOR) if guard else []
        terminations = self._terminations(port_names)
        connect = self.acls.lookup("CONNECT")
        assert connect is not None
        for line in self.http:
            if line.broken or not self._usable(line.terms, line.where, port_names):
                continue
            allow = line.action == "allow"
            if allow:
                out.extend(self._terminate_before(line.terms, terminations, connect))
            out.append(self._text(allow, line.terms))
        if not self.http:
            out.append("deny all")
            return out
        last = self.http[-1]
        last_allow = last.action == "allow"
        if last.broken or (last.terms and not _always(last.terms)):
            # Squid: no line matched -> the opposite of the last line's action
            if not last_allow:
                out.extend(self._terminate_before([], terminations, connect))
            out.append("deny all" if last_allow else "allow all")
        # a rule written twice decides nothing the second time (``http_access deny
        # to_localhost`` after the floor's)
        return list(dict.fromkeys(out))

    def _terminate_before(
        self, terms: list[Term], terminations: list[list[Term]], connect: AclDef
    ) -> list[str]:
        out = []
        for cond in terminations:
            extra = (
                [] if any(a is connect and not n for a, n in terms + cond) else [(connect, False)]
            )
            head = self.words("deny", [*terms, *extra])
            out.append(f"{head} {self.words('', cond, sni=True)}".strip())
        return out

    def _terminations(self, port_names: dict[str, int]) -> list[list[Term]]:
        """The conditions (each a conjunction) under which ``ssl_bump`` terminates a CONNECT
        at the step that decides it: the first splice/bump/terminate line that matches."""
        earlier: list[list[Term]] = []
        found: list[list[Term]] = []
        for line in self.bump:
            terms = _at_final_step(line.terms)
            if terms is None or line.action in ("peek", "stare"):
                continue  # a step-1 line, or a peek/stare: not what decides
            if line.action == "bump" and not self.can_intercept:
                self.report.untranslated(
                    line.where,
                    "fwproxy cannot decrypt tunnels here: no [intercept] section in this "
                    "fwproxy (Squid's bumped requests would be checked again by http_access)",
                )
            if not self._usable(terms, line.where, port_names):
                continue
            terms = [(a, n) for a, n in terms if not _always([(a, n)])]
            if line.action in ("bump", "splice") and self.can_intercept:
                self.intercept.append(self.words(line.action, terms, sni=True))
            if line.action == "terminate":
                negations = [[(a, not n) for a, n in m] for m in earlier]
                count = 1
                for choices in negations:
                    count *= len(choices)
                if count > MAX_EXPANSION:
                    self.report.untranslated(line.where, "too many earlier lines to negate")
                    continue
                for combo in itertools.product(*negations):
                    found.append([*combo, *terms])
            if not terms:
                break  # matches every CONNECT: later lines are never reached
            earlier.append(terms)
        return found


def _always(terms: list[Term]) -> bool:
    """The terms match every request (Squid's ``all``)."""
    return all(a.builtin and a.name == "all" and not n for a, n in terms)


def _at_final_step(terms: list[Term]) -> list[Term] | None:
    """``terms`` as they stand when the splice/terminate decision is taken (step 2 or 3):
    ``at_step SslBump1`` is false then, the other steps true; None: the line cannot match."""
    out = []
    for acl, neg in terms:
        if acl.kind != "at_step":
            out.append((acl, neg))
            continue
        step1 = all(v.lower() == "sslbump1" for v in acl.values)
        if step1 != neg:
            return None
    return out
