# -*- test-case-name: tests.test_acl -*-
"""Access rules with squid's semantics, sans-IO: ``allow|deny [!]NAME ...`` lines parsed against
the named ACLs of :mod:`fwproxy.acl`, and the ordered policy they make: the first rule whose ACLs
all match decides, no match denies. Also the open-proxy check (:meth:`AccessPolicy.open_rules`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fwproxy.acl import Acl, AclContext, AclError, SslSniAcl


@dataclass(frozen=True)
class Rule:
    """``allow`` or ``deny`` when every term matches; a term is ``(acl, negated)``."""

    allow: bool
    terms: tuple[tuple[Acl, bool], ...]
    text: str

    @property
    def needs_addresses(self) -> bool:
        return any(acl.needs_addresses for acl, _ in self.terms)

    def matches(self, ctx: AclContext) -> bool:
        for acl, negated in self.terms:
            if acl.match(ctx) == negated:
                return False
        return True


def parse_rule(text: str, acls: dict[str, Acl], where: str = "access.rules") -> Rule:
    """Parse ``"allow|deny [!]NAME ..."`` against the defined ACLs."""
    words = text.split()
    if not words or words[0] not in ("allow", "deny"):
        raise AclError(f'{where}: {text!r} must start with "allow" or "deny"')
    if len(words) == 1:
        raise AclError(f'{where}: {text!r} names no ACL (write "{words[0]} all")')
    named = [(w[1:], True) if w.startswith("!") else (w, False) for w in words[1:]]
    missing = [name for name, _ in named if name not in acls]
    if missing:
        which = "ACL" if len(missing) == 1 else "ACLs"
        are = "is" if len(missing) == 1 else "are"
        listed = ", ".join(map(repr, missing))
        raise AclError(f"{where}: {text!r} uses {which} {listed}, which {are} not defined")
    terms = tuple((acls[name], negated) for name, negated in named)
    return Rule(words[0] == "allow", terms, " ".join(words))


def _restricts_source(acl: Acl) -> bool:
    if acl.kind == "src":
        return all(n.prefixlen for n in acl.networks)  # type: ignore[attr-defined]
    return acl.kind in ("proxy_auth", "client_cert")


class AccessPolicy:
    """An ordered list of rules; the first match decides, no match denies."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
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
