# -*- test-case-name: tests.test_config -*-
"""Checking the sections of a configuration file, finding every problem at once.

:class:`Problems` collects one line per problem, ``FILE:LINE: KEY: problem``, located with
:func:`fwproxy.tomllines.key_lines` and sorted by line; the functions here check one section
each of the parsed TOML and return its valid values, reporting the rest, so one mistake never
hides another: every bad value of a list is named, an ACL with an error is not also reported
as undefined by the rules that use it. :mod:`fwproxy.config` builds the :class:`Config` from
what they return.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from fwproxy.acl import Acl, AclError, DstAcl, IPNetwork, make_acl, predefined
from fwproxy.auth import HtpasswdChecker, HtpasswdError
from fwproxy.origination import TrustStoreError
from fwproxy.origination import load_certificates as load_trust_store
from fwproxy.parents import Parent, ParentError, parse_address, read_credentials
from fwproxy.routing import RoutingRule, parse_routing_rule
from fwproxy.rules import AccessPolicy, Rule, parse_rule
from fwproxy.tls import CLIENT_CERT_MODES, TLSError, load_certificates
from fwproxy.tomllines import Path, key_lines

_ACL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_KEY_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def key_path(key: str) -> Path:
    """``"filters[1].options"`` -> ``("filters", 1, "options")``."""
    return tuple(m[1] if m[1] else int(m[2]) for m in _KEY_PART.finditer(key))


class Problems:
    """The problems found in one file, each a line ``FILE:LINE: KEY: problem``."""

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self._text = text
        self._where: dict[Path, int] | None = None  # scanned at the first problem
        self._found: list[tuple[int, str]] = []

    def line_of(self, path: Path) -> int | None:
        """The line of ``path``, or of the nearest enclosing key the file has."""
        if self._where is None:
            self._where = key_lines(self._text)
        while path:
            if path in self._where:
                return self._where[path]
            path = path[:-1]
        return None

    def add(self, key: str, message: str, at: Path | None = None) -> None:
        """Report ``message`` about ``key``, found at the line of path ``at`` (default: the
        key's own path; pass it when a name in the key may hold a dot, or to name one value
        of a list)."""
        line = self.line_of(key_path(key) if at is None else at)
        where = f"{self.source}:{line}" if line else self.source
        self._found.append((line or 0, f"{where}: {key}: {message}"))

    def add_error(self, error: Exception, default_key: str, at: Path | None = None) -> None:
        """Report an exception whose message is ``KEY: problem`` (or just a problem)."""
        key, sep, message = str(error).partition(": ")
        if not sep or " " in key:
            key, message = default_key, str(error)
        self.add(key, message, at)

    def __bool__(self) -> bool:
        return bool(self._found)

    @property
    def lines(self) -> list[str]:
        """Every problem once, by line (those of the whole file first)."""
        seen: set[str] = set()
        out = []
        for _, text in sorted(self._found, key=lambda found: found[0]):
            if text not in seen:
                seen.add(text)
                out.append(text)
        return out


def number(
    p: Problems, key: str, value: object, minimum: float = 0, zero: bool = False
) -> float | None:
    """``value`` if it is a finite number greater than ``minimum`` (or 0, with ``zero``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        p.add(key, f"expected a number, got {value!r}")
        return None
    if not math.isfinite(value):  # TOML has nan and inf; timers need neither
        p.add(key, f"expected a finite number, got {value!r}")
        return None
    if zero and value == 0:
        return 0.0
    if zero and value < 0:
        p.add(key, f"must be 0 (no limit) or greater, got {value!r}")
        return None
    if value <= minimum:
        p.add(key, f"must be greater than {minimum:g}, got {value!r}")
        return None
    return float(value)


def integer(p: Problems, key: str, value: object, minimum: int = 1) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        p.add(key, f"expected a whole number, got {value!r}")
        return None
    if value < minimum:
        p.add(key, f"must be at least {minimum}, got {value!r}")
        return None
    return value


def boolean(p: Problems, key: str, section: Mapping[str, Any]) -> bool | None:
    """The value of ``key`` (``"section.name"``) in ``section`` if it is true or false; None
    when it is absent or reported."""
    value = section.get(key.rpartition(".")[2])
    if value is None or isinstance(value, bool):
        return value
    p.add(key, f"expected true or false, got {value!r}")
    return None


def unknown(p: Problems, prefix: str, table: Mapping[str, Any], known: Sequence[str]) -> None:
    for k in table:
        if k not in known:
            p.add(f"{prefix}.{k}" if prefix else k, f"unknown key (known: {', '.join(known)})")


def table(p: Problems, data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        p.add(key, "expected a table")
        return {}
    return value


def numbers(p: Problems, key: str, section: Mapping[str, Any], defaults: type) -> dict[str, Any]:
    """The valid values of a section of numbers, given its dataclass of defaults: fields with
    a whole-number default are counts and sizes (0: no limit, except for the three limits of a
    request head), those with a default of 0.0 rates (0: no limit), the others seconds (greater
    than 0)."""
    fields = dataclasses.fields(defaults)
    unknown(p, key, section, [f.name for f in fields])
    values: dict[str, Any] = {}
    for f in fields:
        name = f.name
        if name not in section:
            continue
        if isinstance(f.default, int):
            low = 1 if name in ("max_header_size", "max_headers", "max_target") else 0
            n: float | None = integer(p, f"{key}.{name}", section[name], low)
        else:
            n = number(p, f"{key}.{name}", section[name], zero=f.default == 0)
        if n is not None:
            values[name] = n
    if values.get("client_request_burst") and not values.get("client_request_rate"):
        p.add(f"{key}.client_request_burst", f"has no effect without {key}.client_request_rate")
    return values


def acl_errors(name: str, kind: str, values: object) -> list[tuple[int | None, AclError]]:
    """Every problem in the definition ``[acl.NAME] KIND = VALUES``: one per bad value of the
    list, with its index, or one for the definition as a whole (index ``None``)."""
    try:
        make_acl(name, kind, values)
        return []
    except AclError as e:
        whole = e
    found: list[tuple[int | None, AclError]] = []
    if isinstance(values, list) and len(values) > 1:
        for i, value in enumerate(values):
            try:
                make_acl(name, kind, [value])
            except AclError as e:
                found.append((i, e))
    return found or [(None, whole)]


def acls(p: Problems, section: Mapping[str, Any]) -> dict[str, Acl]:
    """The predefined ACLs and the valid ``[acl.NAME]`` ones; an ACL defined with an error is
    there as a bare :class:`Acl` that matches nothing, so that the rules naming it are checked
    for their other problems without calling it undefined."""
    found: dict[str, Acl] = predefined()
    for name, spec in section.items():
        key, at = f"acl.{name}", ("acl", name)
        if name in found:
            p.add(key, f"{name!r} is predefined and cannot be redefined", at)
            continue
        found[name] = Acl(name)  # until it is known to be valid
        if not _ACL_NAME.match(name):
            p.add(key, "ACL names are letters, digits, '_', '-' and '.'", at)
        elif not isinstance(spec, Mapping) or len(spec) != 1:
            p.add(key, 'expected exactly one type, e.g. src = ["10.0.0.0/8"]', at)
        else:
            ((kind, values),) = spec.items()
            errors = acl_errors(name, kind, values)
            for i, error in errors:
                where = at + (kind,) if i is None else at + (kind, i)
                p.add_error(error, key, where)
            if not errors:
                found[name] = make_acl(name, kind, values)
    return found


#: ``[access] mode``: the rules deny, or ("report") only report what they would deny
ACCESS_MODES = ("enforce", "report")


def access(p: Problems, section: Mapping[str, Any], defined: dict[str, Acl]) -> AccessPolicy:
    """The ``[access]`` rules and ``mode``; each bad rule is reported at its own line."""
    unknown(p, "access", section, ("rules", "mode"))
    mode = section.get("mode", "enforce")
    if mode not in ACCESS_MODES:
        p.add("access.mode", f'expected "enforce" or "report", got {mode!r}')
    texts = section.get("rules", ["deny all"])
    if not isinstance(texts, list) or not all(isinstance(r, str) for r in texts):
        p.add("access.rules", 'expected a list of strings like "allow localhost"')
        return AccessPolicy([])
    rules = []
    for i, text in enumerate(texts):
        try:
            rules.append(parse_rule(text, defined, "access.rules"))
        except AclError as e:
            p.add_error(e, "access.rules", ("access", "rules", i))
    return AccessPolicy(rules, report_only=mode == "report")


def warnings(source: str, policy: AccessPolicy) -> list[str]:
    """What is valid but most likely a mistake: an open proxy, a way to link-local addresses."""
    found = [
        f"{source}: access.rules: {r.text!r} admits clients from any source address "
        "(no src or proxy_auth ACL in it): this makes an open proxy"
        for r in policy.open_rules()
    ]
    if policy.report_only:
        found.append(
            f'{source}: access.mode: "report": requests the rules deny are relayed (logged with '
            "would_deny); only rules with to_linklocal, to_localhost, to_self, to_private or "
            "to_nonpublic, and authentication, still deny"
        )
    rule = linklocal_rule(policy)
    if rule is not None:
        found.append(
            f"{source}: access.rules: {rule.text!r} lets clients reach link-local destinations "
            '(the cloud metadata service 169.254.169.254): put "deny to_linklocal" before it'
        )
    return found


#: link-local destinations, as the predefined ``to_linklocal`` has them
LINKLOCAL = tuple(
    ipaddress.ip_network(n) for n in ("169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128")
)


def linklocal_rule(policy: AccessPolicy) -> Rule | None:
    """The first ``allow`` rule that can admit a link-local destination (the cloud metadata
    service) before a rule denies all of link-local unconditionally (``deny to_linklocal``).
    A rule with a term that keeps it off link-local cannot: ``!to_linklocal`` (a negated
    ``dst`` ACL covering link-local), or a ``dst`` ACL whose networks are all elsewhere
    (``dst = ["127.0.0.1/32"]``). None: no rule can."""
    for rule in policy.rules:
        if not rule.allow and len(rule.terms) == 1:
            acl, negated = rule.terms[0]
            if not negated and _covers_linklocal(acl):
                return None
        if rule.allow and not any(
            _covers_linklocal(acl) if negated else _avoids_linklocal(acl)
            for acl, negated in rule.terms
        ):
            return rule
    return None


def _within(net: IPNetwork, other: IPNetwork) -> bool:
    return (
        net.version == other.version
        and net.prefixlen >= other.prefixlen
        and int(net.network_address) & int(other.netmask) == int(other.network_address)
    )


def _covers_linklocal(acl: Acl) -> bool:
    """A ``dst`` ACL matching every link-local address."""
    if not isinstance(acl, DstAcl):
        return False
    return all(any(_within(ll, n) for n in acl.networks) for ll in LINKLOCAL)


def _avoids_linklocal(acl: Acl) -> bool:
    """A ``dst`` ACL matching no link-local address (two CIDR networks overlap only when one
    holds the other)."""
    if not isinstance(acl, DstAcl):
        return False
    return not any(_within(n, ll) or _within(ll, n) for n in acl.networks for ll in LINKLOCAL)


def auth(
    p: Problems, section: Mapping[str, Any], fields: Sequence[str], directory: str | None
) -> dict[str, Any]:
    """The valid values of ``[auth]`` (``fields``: its keys). The htpasswd file is read once to
    check it; a relative path is relative to ``directory`` (the configuration file's)."""
    unknown(p, "auth", section, fields)
    values: dict[str, Any] = {}
    for key in ("htpasswd", "realm"):
        if key in section:
            v = section[key]
            if not isinstance(v, str) or not v or any(c in v for c in "\r\n\0"):
                p.add(f"auth.{key}", "expected a non-empty one-line string")
            else:
                values[key] = v
    for key in ("cache_ttl", "failure_window"):
        if key in section:
            n = number(p, f"auth.{key}", section[key])
            if n is not None:
                values[key] = n
    if "max_failures" in section:
        m = integer(p, "auth.max_failures", section["max_failures"], 0)
        if m is not None:
            values["max_failures"] = m
    if "htpasswd" in values:
        path = values["htpasswd"]
        if directory is not None:
            path = os.path.join(directory, path)  # an absolute path stays what it is
        values["htpasswd"] = path
        try:
            HtpasswdChecker(path)
        except HtpasswdError as e:
            p.add("auth.htpasswd", str(e))
    return values


def _ca_file(
    p: Problems,
    section: Mapping[str, Any],
    values: dict[str, Any],
    key: str,
    directory: str | None,
    error: type[Exception],
    load: Any,
) -> None:
    """``[tls] KEY``: the path of a PEM file of CA certificates (relative to ``directory``),
    read once by ``load`` to check it (``error``: what ``load`` raises for a bad file)."""
    if key not in section:
        return
    path = section[key]
    if not isinstance(path, str) or not path or any(c in path for c in "\r\n\0"):
        p.add(f"tls.{key}", "expected the path of a PEM file of CA certificates")
        return
    if directory is not None:
        path = os.path.join(directory, path)  # an absolute path stays what it is
    try:
        load(path)
        values[key] = path
    except error as e:
        p.add(f"tls.{key}", str(e))


def tls(
    p: Problems, section: Mapping[str, Any], fields: Sequence[str], directory: str | None
) -> dict[str, Any]:
    """The valid values of ``[tls]`` (``fields``: its keys). ``client_ca_file`` and
    ``ca_file`` are read once to check that they hold certificates; a relative path is relative
    to ``directory``."""
    unknown(p, "tls", section, fields)
    values: dict[str, Any] = {}
    _ca_file(p, section, values, "client_ca_file", directory, TLSError,
             lambda path: load_certificates(path, "client_ca_file"))  # fmt: skip
    if "client_cert" in section:
        mode = section["client_cert"]
        if mode not in CLIENT_CERT_MODES:
            choices = " or ".join(f'"{m}"' for m in CLIENT_CERT_MODES)
            p.add("tls.client_cert", f"expected {choices}, got {mode!r}")
        elif "client_ca_file" not in section:
            p.add("tls.client_cert", "needs tls.client_ca_file (the CA that signs client certs)")
        else:
            values["client_cert"] = mode
    _ca_file(p, section, values, "ca_file", directory, TrustStoreError, load_trust_store)
    return values


#: ``[tunnel]`` keys whose value is one of a few words, and the words
TUNNEL_CHOICES = {"sni_mismatch": ("deny", "log", "allow"), "ech": ("allow", "deny")}


def tunnel(p: Problems, section: Mapping[str, Any]) -> dict[str, Any]:
    """The valid values of ``[tunnel]``: ``peek_ports`` (a list of ports, possibly empty) and
    the words of :data:`TUNNEL_CHOICES`."""
    unknown(p, "tunnel", section, ("peek_ports", *TUNNEL_CHOICES))
    values: dict[str, Any] = {}
    if "peek_ports" in section:
        ports = section["peek_ports"]
        if not isinstance(ports, list):
            p.add("tunnel.peek_ports", f"expected a list of ports like [443], got {ports!r}")
        else:
            good = set()
            for i, port in enumerate(ports):
                if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                    p.add(
                        "tunnel.peek_ports",
                        f"{port!r} is not a port (1-65535)",
                        ("tunnel", "peek_ports", i),
                    )
                else:
                    good.add(port)
            values["peek_ports"] = frozenset(good)
    for key, words in TUNNEL_CHOICES.items():
        if key in section:
            v = section[key]
            if v not in words:
                listed = " or ".join(f'"{w}"' for w in words)
                p.add(f"tunnel.{key}", f"expected {listed}, got {v!r}")
            else:
                values[key] = v
    return values


def filters(p: Problems, entries: object) -> list[tuple[int, str, dict[str, Any]]]:
    """The ``[[filters]]`` entries that have a name: ``(index, name, options)``."""
    if not isinstance(entries, list):
        p.add("filters", "expected [[filters]] entries")
        return []
    found = []
    for i, entry in enumerate(entries):
        key = f"filters[{i}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            p.add(key, 'each [[filters]] entry needs name = "..."')
            continue
        for k in entry:
            if k not in ("name", "options"):
                p.add(f"{key}.{k}", "unknown key (known: name, options)", ("filters", i, k))
        options = entry.get("options", {})
        if not isinstance(options, Mapping):
            p.add(f"{key}.options", "expected a table")
            options = {}
        found.append((i, entry["name"], dict(options)))
    return found


_PARENT_KEYS = (
    "address",
    "tls",
    "credentials_file",
    "credentials_env",
    "max_failures",
    "retry_after",
)


def parents(
    p: Problems, section: Mapping[str, Any], directory: str | None, env: Any = os.environ
) -> dict[str, Parent]:
    """The valid ``[parents.NAME]`` tables. Credentials are read here (a relative
    ``credentials_file`` is relative to ``directory``); their problems are named, never their
    contents."""
    found: dict[str, Parent] = {}
    for name, spec in section.items():
        key, at = f"parents.{name}", ("parents", name)
        if not _ACL_NAME.match(name):
            p.add(key, "parent names are letters, digits, '_', '-' and '.'", at)
            continue
        if not isinstance(spec, Mapping):
            p.add(key, 'expected a table, e.g. address = "proxy.example:3128"', at)
            continue
        problems: list[tuple[str, str]] = []  # (key, problem)
        unknown(p, key, spec, _PARENT_KEYS)
        values: dict[str, Any] = {}
        address = spec.get("address")
        if address is None:
            problems.append(("", 'needs address = "host:port"'))
        elif not isinstance(address, str):
            problems.append(("address", f'expected "host:port", got {address!r}'))
        else:
            try:
                values["host"], values["port"] = parse_address(address)
            except ParentError as e:
                problems.append(("address", str(e).partition(": ")[2]))
        if "tls" in spec:
            if isinstance(spec["tls"], bool):
                values["tls"] = spec["tls"]
            else:
                problems.append(("tls", f"expected true or false, got {spec['tls']!r}"))
        if "max_failures" in spec:
            values["max_failures"] = integer(p, f"{key}.max_failures", spec["max_failures"], 1)
        if "retry_after" in spec:
            values["retry_after"] = number(p, f"{key}.retry_after", spec["retry_after"])
        sources: dict[str, str] = {}
        for k in ("credentials_file", "credentials_env"):
            v = spec.get(k)
            if v is None:
                continue
            if not isinstance(v, str) or not v or any(c in v for c in "\r\n\0"):
                problems.append((k, "expected a non-empty one-line string"))
            elif k == "credentials_file" and directory is not None:
                sources[k] = os.path.join(directory, v)  # an absolute path stays what it is
            else:
                sources[k] = v
        try:
            values["credentials"] = read_credentials(
                sources.get("credentials_file"), sources.get("credentials_env"), env
            )
        except ParentError as e:
            k, _, message = str(e).partition(": ")
            problems.append((k, message))
        for k, message in problems:
            p.add(f"{key}.{k}" if k else key, message, at + (k,) if k else at)
        reported = any(values.get(k, 1) is None for k in ("max_failures", "retry_after"))
        if not problems and not reported:
            found[name] = Parent(name, **values)
    return found


def routing(
    p: Problems,
    section: Mapping[str, Any],
    acls: Mapping[str, Acl],
    defined: Mapping[str, Parent],
    declared: Collection[str] = (),
) -> tuple[RoutingRule, ...]:
    """The ``[routing] rules``; each bad rule is reported at its own line. A rule naming a
    parent that is ``declared`` (a ``[parents.NAME]`` table) but has a problem of its own is
    not reported again."""
    unknown(p, "routing", section, ("rules",))
    texts = section.get("rules", [])
    if not isinstance(texts, list) or not all(isinstance(r, str) for r in texts):
        p.add("routing.rules", 'expected a list of strings like "parent NAME all"')
        return ()
    rules = []
    for i, text in enumerate(texts):
        try:
            rules.append(parse_routing_rule(text, acls, defined))
        except AclError as e:
            words = text.split()
            names = words[1].split(",") if len(words) > 1 and words[0] == "parent" else []
            if any(n in declared and n not in defined for n in names):
                continue
            p.add_error(e, "routing.rules", ("routing", "rules", i))
    return tuple(rules)
