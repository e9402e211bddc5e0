# -*- test-case-name: tests.test_acl -*-
"""Access rules with squid's semantics, sans-IO: ``allow|deny [!]NAME ...`` lines parsed against
the named ACLs of :mod:`fwproxy.acl`, and the ordered policy they make: the first rule whose ACLs
all match decides, no match denies. Also the open-proxy check (:meth:`AccessPolicy.open_rules`).

Report-only mode (``[access] mode = "report"``, :meth:`AccessPolicy.report`): a request the rules
deny is let through and reported with the rule that would have denied it, except when a rule
that denies by a predefined destination ACL (``to_linklocal``, ``to_localhost``, ``to_self``,
``to_private``, ``to_nonpublic``: the SSRF guard) matches it, wherever that rule stands.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fwproxy.acl import PREDEFINED_DESTINATIONS, Acl, AclContext, AclError, SslSniAcl

#: the rule text reported when no rule matched (squid's implicit last rule)
IMPLICIT_DENY = "deny (no rule matched)"

# ``Request.notes`` keys the ``acl`` filter sets, for the access log and the metrics (a
# TransactionRecord's ``notes``): the text of the rule that denied the request (403), or that
# would have denied it in report-only mode; why authentication failed ("invalid": credentials
# refused, "missing": none sent, "throttled": too many failures from that client, 429)
DENIED_BY, WOULD_DENY, AUTH_FAILED = (
    "fwproxy.denied_by",
    "fwproxy.would_deny",
    "fwproxy.auth_failed",
)


@dataclass(frozen=True)
class Rule:
    """``allow`` or ``deny`` when every term matches; a term is ``(acl, negated)``."""

    allow: bool
    terms: tuple[tuple[Acl, bool], ...]
    text: str

    @property
    def needs_addresses(self) -> bool:
        return any(acl.needs_addresses for acl, _ in self.terms)

    @property
    def guards_destination(self) -> bool:
        """A ``deny`` rule with a predefined destination ACL among its non-negated terms: it
        stays enforced in report-only mode."""
        return not self.allow and any(
            not negated and acl.name in PREDEFINED_DESTINATIONS for acl, negated in self.terms
        )

    def matches(self, ctx: AclContext) -> bool:
        for acl, negated in self.terms:
            if acl.match(ctx) == negated:
                return False
        return True


def acl_terms(
    words: Sequence[str], acls: Mapping[str, Acl]
) -> tuple[tuple[tuple[Acl, bool], ...], list[str]]:
    """A rule's ``[!]NAME`` words as its terms, and the names among them that are not defined
    (then no terms) — for the access, routing and interception rules alike."""
    named = [(w[1:], True) if w.startswith("!") else (w, False) for w in words]
    missing = [name for name, _ in named if name not in acls]
    if missing:
        return (), missing
    return tuple((acls[name], negated) for name, negated in named), []


def undefined(where: str, text: str, missing: Sequence[str]) -> AclError:
    """The error of a rule ``text`` using the ACLs ``missing``."""
    which = "ACL" if len(missing) == 1 else "ACLs"
    are = "is" if len(missing) == 1 else "are"
    listed = ", ".join(map(repr, missing))
    return AclError(f"{where}: {text!r} uses {which} {listed}, which {are} not defined")


def parse_rule(text: str, acls: dict[str, Acl], where: str = "access.rules") -> Rule:
    """Parse ``"allow|deny [!]NAME ..."`` against the defined ACLs."""
    words = text.split()
    if not words or words[0] not in ("allow", "deny"):
        raise AclError(f'{where}: {text!r} must start with "allow" or "deny"')
    if len(words) == 1:
        raise AclError(f'{where}: {text!r} names no ACL (write "{words[0]} all")')
    terms, missing = acl_terms(words[1:], acls)
    if missing:
        raise undefined(where, text, missing)
    return Rule(words[0] == "allow", terms, " ".join(words))


def _restricts_source(acl: Acl) -> bool:
    if acl.kind == "src":
        return all(n.prefixlen for n in acl.networks)  # type: ignore[attr-defined]
    return acl.kind in ("proxy_auth", "client_cert")


class AccessPolicy:
    """An ordered list of rules; the first match decides, no match denies. With
    ``report_only`` (``[access] mode = "report"``) the ``acl`` filter asks :meth:`report`."""

    def __init__(self, rules: Sequence[Rule], report_only: bool = False) -> None:
        self.rules = tuple(rules)
        self.report_only = report_only
        self._guards = tuple(r for r in self.rules if r.guards_destination)
        self.needs_addresses = any(r.needs_addresses for r in self.rules)
        #: some rule has an ``ssl_sni`` ACL: a CONNECT to a peeked port may be decided later
        self.needs_sni = any(acl.kind == SslSniAcl.kind for r in self.rules for acl, _ in r.terms)

    def check(self, ctx: AclContext) -> Rule | None:
        """The deciding rule (``rule.allow`` says allow), or ``None``: no rule matched, deny.

        :raise NeedAddresses: a rule reached needs ``ctx.addresses`` and it is ``None``.
        :raise NeedSni: a rule reached has an ``ssl_sni`` ACL and ``ctx.sni_pending``.
        """
        for rule in self.rules:
            if rule.matches(ctx):
                return rule
        return None

    def allows(self, ctx: AclContext) -> bool:
        rule = self.check(ctx)
        return rule is not None and rule.allow

    def verdict(self, ctx: AclContext) -> tuple[bool, str | None]:
        """``(allowed, rule)``: whether the request may go, and the text of the rule that
        denies it (:data:`IMPLICIT_DENY` when none matched) or, allowed in report-only mode,
        would have denied it; None when a rule allows it.

        In report-only mode a denied request is allowed (and the rule reported) unless the
        deciding rule guards the destination (``deny to_linklocal``, ...) or a guarding rule
        anywhere in the list matches it too: that rule then denies.

        :raise NeedAddresses: as :meth:`check` (a guarding rule may need the addresses).
        :raise NeedSni: as :meth:`check`.
        """
        rule = self.check(ctx)
        if rule is not None and rule.allow:
            return True, None
        text = rule.text if rule is not None else IMPLICIT_DENY
        if not self.report_only or (rule is not None and rule.guards_destination):
            return False, text
        for guard in self._guards:
            if guard.matches(ctx):
                return False, guard.text
        return True, text

    def open_rules(self) -> list[Rule]:
        """``allow`` rules that admit clients from any source: no ``src``, ``proxy_auth`` or
        ``client_cert`` ACL among their non-negated terms (the open-proxy mistake). A ``src``
        ACL with a ``/0`` network (squid's old ``acl all src 0.0.0.0/0``) restricts nothing
        and does not count."""
        return [
            r
            for r in self.rules
            if r.allow and not any(not neg and _restricts_source(acl) for acl, neg in r.terms)
        ]
