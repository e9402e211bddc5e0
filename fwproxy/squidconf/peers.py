# -*- test-case-name: tests.test_squidconf_directives -*-
"""``cache_peer`` parents, ``cache_peer_access``, ``never_direct`` and ``always_direct`` as
``[parents.NAME]`` and ``[routing] rules``.

fwproxy's routing is one first-match list: ``always_direct allow`` lines become ``direct``
rules, each peer's ``cache_peer_access allow`` lines ``parent NAME`` rules, and ``never_direct
allow`` the parents every request may use. Squid may still go direct when its parents fail
(unless ``never_direct``); fwproxy never does: noted. Routing changes where a request goes,
never whether it is allowed.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable

from fwproxy.squidconf.access import Line, Term, parse_terms
from fwproxy.squidconf.acls import Acls
from fwproxy.squidconf.parse import Directive
from fwproxy.squidconf.report import Report

_NAME = re.compile(r"[^A-Za-z0-9_.-]")

#: at most this many routing rules for the combinations of restricted peers (see
#: :meth:`Peers._restricted`)
MAX_COMBINATIONS = 64

#: writes a routing rule: its start ("direct", "parent NAME") and its ACL terms
TextFn = Callable[[str, list[Term]], str]


class Peers:
    """The ``[parents.NAME]`` tables and ``[routing] rules`` of a squid.conf."""

    def __init__(self, acls: Acls, report: Report) -> None:
        self.acls = acls
        self.report = report
        #: squid name -> [parents.NAME] table
        self.parents: dict[str, dict[str, object]] = {}
        self.fw_names: dict[str, str] = {}
        self.access: dict[str, list[Line]] = {}
        self.always: list[Line] = []
        self.never: list[Line] = []
        self.first: Directive | None = None

    def cache_peer(self, d: Directive) -> None:
        if len(d.args) < 3:
            self.report.error(d, "expected cache_peer HOST TYPE HTTP-PORT ICP-PORT [options]")
            return
        host, kind, port = d.args[0], d.args[1], d.args[2]
        if kind != "parent":
            self.report.skip(d, f"{kind} peers: fwproxy has parents only")
            return
        if not port.isdigit() or not 0 < int(port) <= 65535:
            self.report.error(d, f"{port!r} is not a port")
            return
        options = dict(a.partition("=")[::2] for a in d.args[4:])
        name = options.get("name") or host
        table: dict[str, object] = {
            "address": f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        }
        if "ssl" in options or "tls" in options:
            table["tls"] = True
        if options.get("connect-fail-limit", "").isdigit():
            table["max_failures"] = int(options["connect-fail-limit"])
        if "login" in options:
            self.report.note(
                d,
                "login=: fwproxy reads a parent's USER:PASSWORD from a file or an environment "
                "variable: add credentials_file or credentials_env to the parent",
            )
        for o in options:
            if o not in (
                "name",
                "ssl",
                "tls",
                "connect-fail-limit",
                "login",
                "no-query",
                "default",
                "no-digest",
                "no-netdb-exchange",
                "proxy-only",
            ):
                self.report.skip(d, f"option {o} has no fwproxy equivalent")
        fw = _NAME.sub("_", name)
        if not (fw[:1].isalpha() or fw[:1] == "_"):
            fw = "peer_" + fw  # fwproxy's names start with a letter
        while fw in self.fw_names.values():
            fw += "_"
        self.fw_names[name.lower()] = fw
        self.parents[fw] = table
        self.first = self.first or d

    def peer_access(self, d: Directive) -> None:
        if len(d.args) < 2 or d.args[1] not in ("allow", "deny"):
            self.report.error(d, "expected cache_peer_access PEER allow|deny ACL...")
            return
        if d.args[0].lower() not in self.fw_names:
            self.report.error(d, f"no cache_peer is named {d.args[0]!r}")
            return
        if len(d.args) == 2:
            self.report.skip(d, "no ACL: Squid skips the line, and so does the conversion")
            return
        terms = parse_terms(d, d.args[2:], self.acls, self.report)
        if terms is not None:
            self.access.setdefault(d.args[0].lower(), []).append(Line(d.args[1], terms, d))

    def direct(self, d: Directive) -> None:
        if not d.args or d.args[0] not in ("allow", "deny"):
            self.report.error(d, "expected allow|deny ACL...")
            return
        if len(d.args) == 1:
            self.report.skip(d, "no ACL: Squid skips the line, and so does the conversion")
            return
        terms = parse_terms(d, d.args[1:], self.acls, self.report)
        if terms is None:
            return
        line = Line(d.args[0], terms, d)
        if d.args[0] == "deny":
            self.report.skip(
                d,
                "deny lines of always_direct/never_direct: fwproxy routes by "
                "the allow lines (the first matching routing rule)",
            )
            return
        (self.always if d.name == "always_direct" else self.never).append(line)

    def rules(self, text: TextFn) -> list[str]:
        out = [text("direct", line.terms) for line in self.always]
        free = [fw for squid, fw in self.fw_names.items() if squid not in self.access]
        allows: dict[str, list[Line]] = {}
        for squid, lines in self.access.items():
            for line in lines:
                if line.action == "allow":
                    allows.setdefault(squid, []).append(line)
                else:
                    self.report.skip(
                        line.where, "deny lines: the peer is used where an allow line matches"
                    )
        out += self._restricted(allows, text)
        if self.never and not self.parents:
            for line in self.never:
                self.report.untranslated(
                    line.where, "no cache_peer: Squid cannot forward these requests at all"
                )
        elif self.never:
            chosen = free or list(self.parents)
            out.extend(text("parent " + ",".join(chosen), line.terms) for line in self.never)
        elif free and self.first is not None:
            out.append(text("parent " + ",".join(free), []))
            self.report.note(
                self.first,
                "without never_direct Squid goes direct when its parents fail; fwproxy does not",
            )
        return out

    def _restricted(self, allows: dict[str, list[Line]], text: TextFn) -> list[str]:
        """The rules of the peers ``cache_peer_access`` restricts: Squid tries every peer a
        request is allowed to use, in ``cache_peer`` order (the next when one fails), so each
        set of peers whose lines match together is one rule listing them all (with the
        unrestricted peers), the largest sets first — first-match then picks exactly the
        peers Squid would. Over ``MAX_COMBINATIONS`` sets, each line is a rule of its own
        peer (noted: no failover between restricted peers)."""
        order = [squid for squid in self.fw_names if squid in allows]
        free = [squid for squid in self.fw_names if squid not in self.access]
        choices: list[list[Line | None]] = [[*allows[squid], None] for squid in order]
        if math.prod(len(c) for c in choices) - 1 > MAX_COMBINATIONS:
            first = allows[order[0]][0]
            self.report.note(
                first.where,
                f"over {MAX_COMBINATIONS} combinations of cache_peer_access lines: each line is "
                "a rule for its own peer, so a request does not fail over between them",
            )
            return [
                text("parent " + self.fw_names[squid], line.terms)
                for squid in order
                for line in allows[squid]
            ]
        picks = [p for p in itertools.product(*choices) if any(line is not None for line in p)]
        picks.sort(key=lambda p: -sum(line is not None for line in p))  # stable: file order
        out = []
        for pick in picks:
            chosen = {squid for squid, line in zip(order, pick, strict=True) if line is not None}
            names = [fw for squid, fw in self.fw_names.items() if squid in chosen or squid in free]
            terms: list[Term] = []
            for line in pick:
                terms += [t for t in line.terms if t not in terms] if line is not None else []
            out.append(text("parent " + ",".join(names), terms))
        return out
