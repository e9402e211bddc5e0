# -*- test-case-name: tests.test_intercept -*-
"""``[intercept]``: which tunnels fwproxy decrypts (bumps), with which CA, parsed once.

``ca = "DIR"`` names a directory made by ``fwproxy ca init`` (checked at load:
:func:`fwproxy.cacert.load`); ``rules = ["bump ACL...", "splice ACL..."]`` use Squid's words
and the ACLs of ``[acl]`` (``!`` negates; every ACL of a rule must match; the first matching
rule decides; no match splices: the tunnel stays as it is); ``cert_cache`` is how many leaf
certificates (and their TLS contexts) are kept. :class:`InterceptPolicy` decides, sans-IO,
on the :class:`fwproxy.acl.AclContext` of a peeked CONNECT (``ssl_sni`` sees the ClientHello's
server name). Without an ``[intercept]`` section nothing is bumped. Only peeked tunnels (on
``[tunnel] peek_ports``) can be bumped: :func:`warnings` says when the rules cannot bump any.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fwproxy.acl import Acl, AclContext, AclError, PortAcl
from fwproxy.cacert import CA, KEY_FILE, CAError, load
from fwproxy.configcheck import Problems, integer, unknown
from fwproxy.leafcerts import LeafCerts
from fwproxy.rules import Rule, acl_terms

#: the words an ``[intercept]`` rule may start with
ACTIONS = ("bump", "splice")


def parse_intercept_rule(text: str, acls: Mapping[str, Acl]) -> Rule:
    """``"bump|splice [!]NAME ..."`` against the defined ACLs (``Rule.allow``: bump).

    :raise AclError: another first word, no ACL, or an ACL that is not defined.
    """
    words = text.split()
    if not words or words[0] not in ACTIONS:
        raise AclError(f'intercept.rules: {text!r} must start with "bump" or "splice"')
    if len(words) == 1:
        raise AclError(f'intercept.rules: {text!r} names no ACL (write "{words[0]} all")')
    terms, missing = acl_terms(words[1:], acls)
    if missing:
        listed = ", ".join(map(repr, missing))
        raise AclError(f"intercept.rules: {text!r} uses {listed}, not defined in [acl]")
    return Rule(words[0] == "bump", terms, " ".join(words))


class InterceptPolicy:
    """The ordered ``[intercept]`` rules: the first that matches decides; none: splice."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)

    def bump(self, ctx: AclContext) -> Rule | None:
        """The rule that says to bump the tunnel of ``ctx``, or None: splice.

        :raise NeedAddresses: a rule reached needs ``ctx.addresses`` and it is None (and the
            like of :meth:`fwproxy.rules.AccessPolicy.check`).
        """
        for rule in self.rules:
            if rule.matches(ctx):
                return rule if rule.allow else None
        return None


@dataclass(frozen=True)
class InterceptConfig:
    """``[intercept]``: the CA (loaded), the policy, and the leaf certificates made with it
    (a cache that lives as long as this configuration: a reload starts a new one)."""

    ca: CA
    policy: InterceptPolicy
    cert_cache: int = 1000
    leaves: LeafCerts = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "leaves", LeafCerts(self.ca, self.cert_cache))


def check(
    p: Problems, section: Mapping[str, Any], acls: Mapping[str, Acl], directory: str | None
) -> InterceptConfig | None:
    """The ``[intercept]`` section, every problem reported on ``p``; None when it has one."""
    unknown(p, "intercept", section, ("ca", "rules", "cert_cache"))
    ca: CA | None = None
    path = section.get("ca")
    if not isinstance(path, str) or not path or any(c in path for c in "\r\n\0"):
        p.add("intercept.ca", 'expected the CA directory made by "fwproxy ca init DIR"')
    else:
        if directory is not None:
            path = os.path.join(directory, path)
        try:
            ca = load(path)
        except CAError as e:
            p.add("intercept.ca", str(e))
    size = 1000
    if "cert_cache" in section:
        size = integer(p, "intercept.cert_cache", section["cert_cache"]) or size
    texts = section.get("rules", [])
    rules: list[Rule] = []
    if not isinstance(texts, list) or not all(isinstance(r, str) for r in texts):
        p.add("intercept.rules", 'expected a list of strings like "bump ACL" or "splice ACL"')
    else:
        for i, text in enumerate(texts):
            try:
                rules.append(parse_intercept_rule(text, acls))
            except AclError as e:
                p.add_error(e, "intercept.rules", ("intercept", "rules", i))
    if ca is None:
        return None
    return InterceptConfig(ca, InterceptPolicy(rules), size)


def _can_match_port(rule: Rule, port: int) -> bool:
    """Whether ``rule``'s ``port`` ACLs let it match a tunnel to ``port`` (its other terms
    aside)."""
    for acl, negated in rule.terms:
        if isinstance(acl, PortAcl):
            inside = any(lo <= port <= hi for lo, hi in acl.ranges)
            if inside == negated:
                return False
    return True


def warnings(source: str, intercept: InterceptConfig, peek_ports: frozenset[int]) -> list[str]:
    """What is valid in ``[intercept]`` but bumps nothing: no ``bump`` rule, no peeked port
    (only a peeked tunnel's ClientHello is answered), a ``bump`` rule whose ``port`` ACLs
    match no peeked port."""
    found = _key_exposed(source, intercept.ca)
    bumps = [r for r in intercept.policy.rules if r.allow]
    if not bumps:
        return [*found, f'{source}: intercept.rules: no "bump" rule: no tunnel is decrypted']
    if not peek_ports:
        return [
            *found,
            f"{source}: intercept.rules: tunnel.peek_ports is empty: no tunnel is peeked, so "
            "none is decrypted (bumping answers the ClientHello of a peeked tunnel)",
        ]
    ports = ", ".join(map(str, sorted(peek_ports)))
    return found + [
        f"{source}: intercept.rules: {r.text!r} matches no port of tunnel.peek_ports "
        f"({ports}): it never bumps (only peeked tunnels are)"
        for r in bumps
        if not any(_can_match_port(r, p) for p in peek_ports)
    ]


def _key_exposed(source: str, ca: CA) -> list[str]:
    """A warning when the CA's key may be read by others than its owner: whoever reads it can
    impersonate every site to every client that trusts the CA."""
    path = os.path.join(ca.directory, KEY_FILE)
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        return []  # read a moment ago by load(); a race is not this check's to report
    if not mode & 0o077:
        return []
    return [
        f"{source}: intercept.ca: {path} is readable or writable by others than its owner "
        f"(mode {mode:04o}): whoever reads it can impersonate any site to the clients that "
        f"trust the CA (chmod 600 {path})"
    ]
