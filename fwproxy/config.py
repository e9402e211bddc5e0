# -*- test-case-name: tests.test_config -*-
"""The proxy's configuration: one TOML file validated into one immutable :class:`Config`.

:func:`load` reads a file (or the embedded default, ``fwproxy/default.toml``), checks every key
and value, and either returns a :class:`Config` or raises :class:`ConfigError` carrying one
line per problem, each naming the file, the line where it can be found, the key and what is
wrong. Nothing reads configuration anywhere else: the proxy is built from this object.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

from fwproxy.acl import AccessPolicy, Acl, AclError, make_acl, parse_rule, predefined
from fwproxy.filters.headers import HeaderPolicy
from fwproxy.twisted_private import endpoint_port

DEFAULT_NAME = "<default>"


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` has one line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class Timeouts:
    """Seconds. ``connect``: DNS plus TCP connect upstream; ``request_header``: from the first
    byte of a request to the end of its head (slowloris); ``client_idle``: a keep-alive client
    connection with no request; ``upstream_first_byte``: from the request sent to the first
    byte of the response; ``read``: no byte either way in the middle of a relayed transaction;
    ``tunnel_idle``: no byte either way in a CONNECT tunnel; ``drain``: on SIGTERM, how long
    transactions in flight may take to finish before they are cut."""

    connect: float = 10.0
    request_header: float = 30.0
    client_idle: float = 60.0
    upstream_first_byte: float = 60.0
    read: float = 900.0
    tunnel_idle: float = 900.0
    drain: float = 25.0


@dataclass(frozen=True)
class Limits:
    """``max_header_size``: bytes in a request head (431 over it); ``max_headers``: fields
    in a request head (431); ``max_target``: bytes in a request target (414);
    ``max_body_size``: bytes in a request body (413; 0: no limit); ``max_connections``: client
    connections at once (503 beyond; 0: derived from the file-descriptor limit);
    ``max_connections_per_client``: from one client address (0: no limit);
    ``max_upstream_per_host``: connections to one origin ``host:port``, busy or idle (further
    requests wait for one; 0: no limit)."""

    max_header_size: int = 65536
    max_headers: int = 200
    max_target: int = 65536
    max_body_size: int = 0
    max_connections: int = 0
    max_connections_per_client: int = 0
    max_upstream_per_host: int = 0


@dataclass(frozen=True)
class PoolConfig:
    """Idle upstream connections kept per ``host:port`` and for how long (seconds)."""

    max_idle_per_host: int = 256
    idle_timeout: float = 30.0


@dataclass(frozen=True)
class AuthConfig:
    """``[auth]``: ``htpasswd`` (bcrypt or {SHA} entries; re-read when it changes), the
    ``realm`` in the 407 challenge, ``cache_ttl`` seconds a verified login is remembered,
    ``max_failures`` failed attempts per client address within ``failure_window`` seconds
    before further attempts get 429 (0: no limit)."""

    htpasswd: str | None = None
    realm: str = "fwproxy"
    cache_ttl: float = 300.0
    max_failures: int = 10
    failure_window: float = 60.0


@dataclass(frozen=True)
class FilterSpec:
    """One ``[[filters]]`` entry: a filter's name and its options table."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    """Everything the proxy needs, validated. Built by :func:`load` or :func:`parse`."""

    listen: tuple[str, ...] = ("tcp:3128:interface=127.0.0.1",)
    timeouts: Timeouts = Timeouts()
    limits: Limits = Limits()
    pool: PoolConfig = PoolConfig()
    acls: Mapping[str, Acl] = field(default_factory=predefined)
    access: AccessPolicy = field(default_factory=lambda: AccessPolicy([]))
    headers: Mapping[str, Any] = field(default_factory=lambda: {"forwarded_for": "delete"})
    log: Mapping[str, Any] = field(default_factory=lambda: {"access": "-", "format": "squid"})
    filters: tuple[FilterSpec, ...] = ()
    auth: AuthConfig | None = None
    source: str = DEFAULT_NAME
    warnings: tuple[str, ...] = ()

    def with_listen(self, listen: Sequence[str]) -> Config:
        """This configuration listening on ``listen`` instead (``--listen`` on the command line)."""
        return replace(self, listen=tuple(listen))

    @property
    def builtin_filters(self) -> tuple[FilterSpec, ...]:
        """The built-in filters every proxy runs, before the ``[[filters]]``."""
        return (
            FilterSpec("acl", {}),
            FilterSpec("headers", dict(self.headers)),
            FilterSpec("accesslog", dict(self.log)),
        )

    @property
    def all_filters(self) -> tuple[FilterSpec, ...]:
        return self.builtin_filters + self.filters


_SECTIONS = (
    "proxy",
    "timeouts",
    "limits",
    "pool",
    "auth",
    "acl",
    "access",
    "headers",
    "log",
    "filters",
)


class _Problems:
    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.lines = text.splitlines()
        self.items: list[str] = []

    def line_of(self, key: str) -> int | None:
        """Best effort: the line defining dotted ``key`` (tomllib gives no positions)."""
        m = re.match(r"^([A-Za-z_]+)\[(\d+)\]", key)
        if m:  # the N-th [[name]] entry
            pat = re.compile(r"^\s*\[\[\s*" + re.escape(m.group(1)) + r"\s*\]\]")
            hits = [i + 1 for i, line in enumerate(self.lines) if pat.match(line)]
            n = int(m.group(2))
            return hits[n] if n < len(hits) else None
        parts = key.split(".")
        for n in range(len(parts) - 1, 0, -1):
            table = ".".join(parts[:n])
            pat = re.compile(r"^\s*\[\[?\s*" + re.escape(table) + r"\s*\]\]?\s*(#.*)?$")
            for i, line in enumerate(self.lines):
                if pat.match(line):
                    if n == len(parts):
                        return i + 1
                    kpat = re.compile(r"^\s*" + re.escape(parts[n]) + r"\s*=")
                    for j in range(i + 1, len(self.lines)):
                        if self.lines[j].lstrip().startswith("["):
                            break
                        if kpat.match(self.lines[j]):
                            return j + 1
                    return i + 1
        kpat = re.compile(r"^\s*\[*" + re.escape(parts[0]) + r"[\s\].=]")
        for i, line in enumerate(self.lines):
            if kpat.match(line):
                return i + 1
        return None

    def add(self, key: str, message: str) -> None:
        line = self.line_of(key)
        where = f"{self.source}:{line}" if line else self.source
        self.items.append(f"{where}: {key}: {message}")


def _number(p: _Problems, key: str, value: object, minimum: float = 0) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        p.add(key, f"expected a number, got {value!r}")
        return None
    if not math.isfinite(value):  # TOML has nan and inf; timers need neither
        p.add(key, f"expected a finite number, got {value!r}")
        return None
    if value <= minimum:
        p.add(key, f"must be greater than {minimum:g}, got {value!r}")
        return None
    return float(value)


def _integer(p: _Problems, key: str, value: object, minimum: int = 1) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        p.add(key, f"expected a whole number, got {value!r}")
        return None
    if value < minimum:
        p.add(key, f"must be at least {minimum}, got {value!r}")
        return None
    return value


def _unknown(p: _Problems, prefix: str, table: Mapping[str, Any], known: Sequence[str]) -> None:
    for k in table:
        if k not in known:
            p.add(f"{prefix}.{k}" if prefix else k, f"unknown key (known: {', '.join(known)})")


def _table(p: _Problems, data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        p.add(key, "expected a table")
        return {}
    return value


def _validate_endpoint(description: str) -> str | None:
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    try:
        endpoint = serverFromString(MemoryReactor(), description)
    except Exception as e:  # noqa: BLE001 - Twisted raises several types for bad strings
        return str(e) or type(e).__name__
    # TCP and TLS endpoints, also behind haproxy:; Twisted checks the port only at listen()
    port = endpoint_port(endpoint)
    if isinstance(port, int) and not 0 <= port <= 65535:
        return f"port {port} is out of range (0-65535)"
    return None


def parse(data: Mapping[str, Any], source: str = DEFAULT_NAME, text: str = "") -> Config:
    """Validate parsed TOML ``data`` into a :class:`Config`; raise :class:`ConfigError`."""
    p = _Problems(source, text)
    _unknown(p, "", data, _SECTIONS)
    kwargs: dict[str, Any] = {"source": source}

    proxy = _table(p, data, "proxy")
    _unknown(p, "proxy", proxy, ("listen",))
    if "listen" in proxy:
        listen = proxy["listen"]
        if isinstance(listen, str):
            listen = [listen]
        if (
            not isinstance(listen, list)
            or not listen
            or not all(isinstance(s, str) for s in listen)
        ):
            p.add("proxy.listen", 'expected a non-empty list of endpoint strings like "tcp:3128"')
        else:
            for s in listen:
                err = _validate_endpoint(s)
                if err:
                    p.add("proxy.listen", f"{s!r} is not a valid endpoint: {err}")
            kwargs["listen"] = tuple(listen)

    for key, cls in (("timeouts", Timeouts), ("limits", Limits), ("pool", PoolConfig)):
        table = _table(p, data, key)
        fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
        _unknown(p, key, table, list(fields))
        values: dict[str, Any] = {}
        for name, f in fields.items():
            if name not in table:
                continue
            if isinstance(f.default, int):  # counts and sizes: whole numbers, 0 = no limit
                low = 1 if name in ("max_header_size", "max_headers", "max_target") else 0
                n: float | None = _integer(p, f"{key}.{name}", table[name], low)
            else:
                n = _number(p, f"{key}.{name}", table[name])
            if n is not None:
                values[name] = n
        kwargs[key] = cls(**values)

    acls: dict[str, Acl] = predefined()
    acl_table = _table(p, data, "acl")
    for name, spec in acl_table.items():
        key = f"acl.{name}"
        if name in acls:
            p.add(key, f"{name!r} is predefined and cannot be redefined")
            continue
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]*$", name):
            p.add(key, "ACL names are letters, digits, '_', '-' and '.'")
            continue
        if not isinstance(spec, Mapping) or len(spec) != 1:
            p.add(key, 'expected exactly one type, e.g. src = ["10.0.0.0/8"]')
            continue
        ((kind, values),) = spec.items()
        try:
            acls[name] = make_acl(name, kind, values)
        except AclError as e:
            msg = str(e)
            k, _, rest = msg.partition(": ")
            p.add(k if k.startswith("acl.") else key, rest or msg)
    kwargs["acls"] = acls

    access = _table(p, data, "access")
    _unknown(p, "access", access, ("rules",))
    rules_text = access.get("rules", ["deny all"])
    rules = []
    if not isinstance(rules_text, list) or not all(isinstance(r, str) for r in rules_text):
        p.add("access.rules", 'expected a list of strings like "allow localhost"')
    else:
        for i, text_rule in enumerate(rules_text):
            try:
                rules.append(parse_rule(text_rule, acls, f"access.rules[{i}]"))
            except AclError as e:
                p.add("access.rules", str(e).partition(": ")[2] or str(e))
    policy = AccessPolicy(rules)
    kwargs["access"] = policy
    warnings = [
        f"{source}: access.rules: {r.text!r} admits clients from any source address "
        "(no src or proxy_auth ACL in it): this makes an open proxy"
        for r in policy.open_rules()
    ]
    if policy.reaches_linklocal():
        warnings.append(
            f"{source}: access.rules: clients can reach link-local destinations (the cloud "
            'metadata service 169.254.169.254): put "deny to_linklocal" before the allow rules'
        )
    kwargs["warnings"] = tuple(warnings)

    if "auth" in data:
        kwargs["auth"] = _auth(p, _table(p, data, "auth"), source)
    if "auth" not in kwargs and any(a.kind == "proxy_auth" for a in acls.values()):
        name = next(a.name for a in acls.values() if a.kind == "proxy_auth")
        p.add(f"acl.{name}", 'a proxy_auth ACL needs an [auth] section (htpasswd = "PATH")')

    headers = _table(p, data, "headers")
    try:
        HeaderPolicy.from_options(headers)
    except ValueError as e:
        k, _, msg = str(e).partition(": ")
        p.add(k, msg)
    kwargs["headers"] = dict(headers) or {"forwarded_for": "delete"}

    log = _table(p, data, "log")
    kwargs["log"] = {"access": "-", "format": "squid", **log}

    filters = data.get("filters", [])
    specs = []
    if not isinstance(filters, list):
        p.add("filters", "expected [[filters]] entries")
        filters = []
    for i, entry in enumerate(filters):
        key = f"filters[{i}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            p.add("filters", f'{key}: each [[filters]] entry needs name = "..."')
            continue
        for k in entry:
            if k not in ("name", "options"):
                p.add("filters", f"{key}.{k}: unknown key (known: name, options)")
        options = entry.get("options", {})
        if not isinstance(options, Mapping):
            p.add("filters", f"{key}.options: expected a table")
            options = {}
        specs.append(FilterSpec(entry["name"], dict(options)))
    kwargs["filters"] = tuple(specs)

    if p.items:
        raise ConfigError(p.items)
    config = Config(**kwargs)
    _check_filters(config, p)
    if p.items:
        raise ConfigError(p.items)
    return config


def _auth(p: _Problems, table: Mapping[str, Any], source: str) -> AuthConfig | None:
    fields = AuthConfig.__dataclass_fields__
    _unknown(p, "auth", table, list(fields))
    values: dict[str, Any] = {}
    for key in ("htpasswd", "realm"):
        if key in table:
            v = table[key]
            if not isinstance(v, str) or not v or any(c in v for c in "\r\n\0"):
                p.add(f"auth.{key}", "expected a non-empty one-line string")
            else:
                values[key] = v
    for key in ("cache_ttl", "failure_window"):
        if key in table:
            n = _number(p, f"auth.{key}", table[key])
            if n is not None:
                values[key] = n
    if "max_failures" in table:
        n = _integer(p, "auth.max_failures", table["max_failures"], 0)
        if n is not None:
            values["max_failures"] = n
    if "htpasswd" in values:
        from fwproxy.auth import HtpasswdChecker, HtpasswdError

        path = values["htpasswd"]
        if not os.path.isabs(path) and source != DEFAULT_NAME:
            path = os.path.join(os.path.dirname(os.path.abspath(source)), path)
        values["htpasswd"] = path
        try:
            HtpasswdChecker(path)
        except HtpasswdError as e:
            p.add("auth.htpasswd", str(e))
    return AuthConfig(**values)


def _check_filters(config: Config, p: _Problems) -> None:
    """Find and trial-build every filter, so a bad name or option fails before listening."""
    from twisted.internet.testing import MemoryReactorClock

    from fwproxy.plugins import FilterContext, find_factory

    context = FilterContext(MemoryReactorClock(), config)
    for i, spec in enumerate(config.all_filters):
        is_builtin = i < len(config.builtin_filters)
        key = spec.name if is_builtin else f"filters[{i - len(config.builtin_filters)}]"
        try:
            factory = find_factory(spec.name)
            factory.build(spec.options, context)
        except (LookupError, ValueError, TypeError) as e:
            msg = str(e)
            if is_builtin:
                k, _, rest = msg.partition(": ")
                p.add(k if rest else "filters", rest or msg)
            else:
                p.add(key, msg)


def loads(text: str, source: str = DEFAULT_NAME) -> Config:
    """Parse and validate TOML ``text``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        where = f"{source}:{m.group(1)}" if m else source
        raise ConfigError([f"{where}: invalid TOML: {e}"]) from None
    return parse(data, source, text)


def default_text() -> str:
    """The embedded default configuration (safe: loopback only)."""
    return resources.files("fwproxy").joinpath("default.toml").read_text(encoding="utf-8")


def load(path: str | None = None) -> Config:
    """Load ``path``, or the embedded default when ``path`` is None."""
    if path is None:
        return loads(default_text(), DEFAULT_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror or e}"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: not UTF-8 text: {e}"]) from None
    return loads(text, path)
