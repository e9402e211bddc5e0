# -*- test-case-name: tests.test_config -*-
"""The proxy's configuration: one TOML file validated into one immutable :class:`Config`.

:func:`load` reads a file (or the embedded default, ``fwproxy/default.toml``), checks every key
and value, and either returns a :class:`Config` or raises :class:`ConfigError` carrying one
line per problem, each naming the file, the line where it can be found, the key and what is
wrong. Nothing reads configuration anywhere else: the proxy is built from this object.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

from fwproxy import configcheck as check
from fwproxy.acl import Acl, predefined
from fwproxy.configcheck import Problems
from fwproxy.intercept_config import InterceptConfig
from fwproxy.intercept_config import check as check_intercept
from fwproxy.intercept_config import warnings as intercept_warnings
from fwproxy.parents import Parent
from fwproxy.proxyheader import HeaderSenders, any_peer_warning, open_listeners, parse_senders
from fwproxy.relayconfig import RelayConfig, relay
from fwproxy.routing import RoutingRule
from fwproxy.rules import AccessPolicy
from fwproxy.tls import check_listener, is_ssl
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
    transactions in flight may take to finish before they are cut; ``client_hello``: from a
    peeked tunnel's ``200`` to the end of the client's TLS ClientHello; ``upgrade_idle``: no
    byte either way on an upgraded connection (a WebSocket through the relay; unset: as
    ``tunnel_idle``)."""

    connect: float = 10.0
    request_header: float = 30.0
    client_idle: float = 60.0
    upstream_first_byte: float = 60.0
    read: float = 900.0
    tunnel_idle: float = 900.0
    drain: float = 25.0
    client_hello: float = 10.0
    upgrade_idle: float = 900.0


@dataclass(frozen=True)
class Limits:
    """``max_header_size``: bytes in a request head (431 over it); ``max_headers``: fields
    in a request head (431); ``max_target``: bytes in a request target (414);
    ``max_body_size``: bytes in a request body (413; 0: no limit); ``max_connections``: client
    connections at once (503 beyond; 0: derived from the file-descriptor limit);
    ``max_connections_per_client``: from one client address (0: no limit);
    ``max_upstream_per_host``: connections to one origin ``host:port``, busy or idle (further
    requests wait for one; 0: no limit); ``client_request_rate``: requests (and CONNECTs) per
    second from one client address, or one user when authenticated, a token bucket holding
    ``client_request_burst`` of them (0: one second's worth) — beyond, ``429`` with
    ``Retry-After`` (0: no limit); ``max_tunnels_per_client``: CONNECT tunnels open at once
    from one client address or user (``429``; 0: no limit)."""

    max_header_size: int = 65536
    max_headers: int = 200
    max_target: int = 65536
    max_body_size: int = 0
    max_connections: int = 0
    max_connections_per_client: int = 0
    max_upstream_per_host: int = 0
    client_request_rate: float = 0.0
    client_request_burst: int = 0
    max_tunnels_per_client: int = 0


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
class TlsConfig:
    """``[tls]``: for ``ssl:`` listeners, ``client_ca_file`` (PEM) signs the client
    certificates the listeners ask for and verify (none asked for without it); with
    ``client_cert = "optional"`` a client may connect without one, with ``"required"`` its
    handshake fails. The key and certificate are the ``ssl:`` endpoint's own parameters.
    For the TLS the proxy originates (``https://`` origins, parents with ``tls = true``),
    ``ca_file`` (PEM) holds the CA certificates trusted instead of the system trust store: it
    names the upstream trust store only."""

    client_ca_file: str | None = None
    client_cert: str = "optional"
    ca_file: str | None = None


@dataclass(frozen=True)
class TunnelConfig:
    """``[tunnel]``: ``peek_ports``, the CONNECT ports whose client's TLS ClientHello is read
    before splicing (:mod:`fwproxy.peek`); ``sni_mismatch``, what to do with a CONNECT to a
    host name whose ClientHello names another server (``"deny"``, ``"log"``: allow with a
    warning, ``"allow"``); ``ech``, whether a ClientHello with Encrypted Client Hello is let
    through (``"allow"``) or not (``"deny"``)."""

    peek_ports: frozenset[int] = frozenset({443})
    sni_mismatch: str = "deny"
    ech: str = "allow"


@dataclass(frozen=True)
class AdminConfig:
    """``[admin]``: the admin listener (:mod:`fwproxy.admin`: ``/healthz``, ``/readyz``,
    ``/metrics``) on ``listen`` (endpoint strings; empty: none), and ``metrics_dir``, the
    writable directory where ``--workers`` processes keep their metrics for one scrape to see
    them all (default: a new temporary directory). ``listen_required``: ``listen`` was written
    in the file, so a port that cannot be bound stops start-up; the built-in default is
    best effort (a warning)."""

    listen: tuple[str, ...] = ("tcp:9128:interface=127.0.0.1",)
    metrics_dir: str | None = None
    listen_required: bool = False


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
    tunnel: TunnelConfig = TunnelConfig()
    relay: RelayConfig = RelayConfig()
    acls: Mapping[str, Acl] = field(default_factory=predefined)
    access: AccessPolicy = field(default_factory=lambda: AccessPolicy([]))
    headers: Mapping[str, Any] = field(default_factory=lambda: {"forwarded_for": "delete"})
    log: Mapping[str, Any] = field(default_factory=lambda: {"access": "-", "format": "squid"})
    filters: tuple[FilterSpec, ...] = ()
    auth: AuthConfig | None = None
    tls: TlsConfig = TlsConfig()
    #: ``[parents.NAME]``, by name
    parents: Mapping[str, Parent] = field(default_factory=dict)
    #: ``[routing] rules``
    routing: tuple[RoutingRule, ...] = ()
    #: ``[proxy] watch_config``: reload when the file changes (a ConfigMap's symlink swap)
    watch_config: bool = False
    #: ``[proxy] proxy_protocol_from``: the peers that may send a PROXY-protocol header to a
    #: ``haproxy:`` listener (``None``, the key absent: any peer, with a warning)
    proxy_protocol_from: HeaderSenders | None = None
    admin: AdminConfig = AdminConfig()
    intercept: InterceptConfig | None = None
    source: str = DEFAULT_NAME
    warnings: tuple[str, ...] = ()

    def with_listen(self, listen: Sequence[str]) -> Config:
        """This configuration listening on ``listen`` instead (``--listen`` on the command line)."""
        warnings = self.warnings
        haproxy = open_listeners(listen)
        if haproxy and self.proxy_protocol_from is None:
            warnings += (any_peer_warning("--listen", haproxy[0]),)
        return replace(self, listen=tuple(listen), warnings=warnings)

    @property
    def builtin_filters(self) -> tuple[FilterSpec, ...]:
        """The built-in filters every proxy runs, before the ``[[filters]]`` (``ratelimit``
        when a ``[limits]`` client limit is set: after ``acl``, which finds the user)."""
        limits = self.limits
        rate = limits.client_request_rate or limits.max_tunnels_per_client
        return (
            FilterSpec("acl", {}),
            *((FilterSpec("ratelimit", {}),) if rate else ()),
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
    "tunnel",
    "relay",
    "auth",
    "tls",
    "acl",
    "access",
    "headers",
    "log",
    "filters",
    "parents",
    "routing",
    "admin",
    "intercept",
)


def validate_endpoint(description: str) -> str | None:
    """What is wrong with the server endpoint string ``description`` (e.g. ``tcp:3128``), or
    None; nothing is listened on."""
    from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
    from twisted.internet.testing import MemoryReactor

    if is_ssl(description):  # fwproxy's own TLS listener: its files are read, as to listen
        return check_listener(description)
    try:
        endpoint = serverFromString(MemoryReactor(), description)
    except Exception as e:  # noqa: BLE001 - Twisted raises several types for bad strings
        if description.startswith("systemd:") and isinstance(e, (IndexError, KeyError)):
            return "no such socket was passed by systemd (socket activation: LISTEN_FDS)"
        return str(e) or type(e).__name__
    if isinstance(endpoint, AdoptedStreamServerEndpoint):
        return None  # systemd's socket: listening on it, even on a MemoryReactor, closes it
    # TCP and TLS endpoints, also behind haproxy:; Twisted checks the port only at listen()
    port = endpoint_port(endpoint)
    if isinstance(port, int) and not 0 <= port <= 65535:
        return f"port {port} is out of range (0-65535)"
    return None


def parse(data: Mapping[str, Any], source: str = DEFAULT_NAME, text: str = "") -> Config:
    """Validate parsed TOML ``data`` into a :class:`Config`; raise :class:`ConfigError` with
    every problem, by line (``text``, the document ``data`` was parsed from, gives the lines)."""
    p = Problems(source, text)
    check.unknown(p, "", data, _SECTIONS)
    kwargs: dict[str, Any] = {"source": source}
    listen = _listen(p, check.table(p, data, "proxy"))
    if listen:
        kwargs["listen"] = listen
    watch = check.boolean(p, "proxy.watch_config", check.table(p, data, "proxy"))
    if watch is not None:
        kwargs["watch_config"] = watch
    senders = _senders(p, check.table(p, data, "proxy"), listen, source)
    if isinstance(senders, str):
        warning = senders
    else:
        kwargs["proxy_protocol_from"], warning = senders, ""
    for key, cls in (("timeouts", Timeouts), ("limits", Limits), ("pool", PoolConfig)):
        kwargs[key] = cls(**check.numbers(p, key, check.table(p, data, key), cls))
    if "upgrade_idle" not in check.table(p, data, "timeouts"):
        kwargs["timeouts"] = replace(
            kwargs["timeouts"], upgrade_idle=kwargs["timeouts"].tunnel_idle
        )
    kwargs["relay"] = RelayConfig(**relay(p, check.table(p, data, "relay")))
    kwargs["tunnel"] = TunnelConfig(**check.tunnel(p, check.table(p, data, "tunnel")))
    acls = check.acls(p, check.table(p, data, "acl"))
    kwargs["acls"] = acls
    kwargs["access"] = check.access(p, check.table(p, data, "access"), acls)
    kwargs["warnings"] = tuple(check.warnings(source, kwargs["access"]))
    if warning:
        kwargs["warnings"] += (warning,)
    here = None if source == DEFAULT_NAME else os.path.dirname(os.path.abspath(source))
    if "auth" in data:
        fields = list(AuthConfig.__dataclass_fields__)
        kwargs["auth"] = AuthConfig(**check.auth(p, check.table(p, data, "auth"), fields, here))
    else:
        needing = [a.name for a in acls.values() if a.kind == "proxy_auth"]
        if needing:
            p.add(
                f"acl.{needing[0]}", 'a proxy_auth ACL needs an [auth] section (htpasswd = "PATH")'
            )
    tls_fields = list(TlsConfig.__dataclass_fields__)
    kwargs["tls"] = tls = TlsConfig(**check.tls(p, check.table(p, data, "tls"), tls_fields, here))
    needing = [a.name for a in acls.values() if a.kind == "client_cert"]
    if needing and not tls.client_ca_file:
        p.add(
            f"acl.{needing[0]}",
            "a client_cert ACL needs [tls] client_ca_file (the CA of the client certificates)",
        )
    declared = check.table(p, data, "parents")
    kwargs["parents"] = parents = check.parents(p, declared, here)
    routing = check.table(p, data, "routing")
    kwargs["routing"] = check.routing(p, routing, acls, parents, set(declared))
    kwargs["headers"] = dict(check.table(p, data, "headers")) or {"forwarded_for": "delete"}
    kwargs["log"] = {"access": "-", "format": "squid", **check.table(p, data, "log")}
    entries = check.filters(p, data.get("filters", []))
    kwargs["filters"] = tuple(FilterSpec(name, options) for _, name, options in entries)
    if "admin" in data:
        admin = _admin(p, check.table(p, data, "admin"), here)
        kwargs["admin"] = AdminConfig(**admin)
    if "intercept" in data:
        kwargs["intercept"] = intercept = check_intercept(
            p, check.table(p, data, "intercept"), acls, here
        )
        if intercept is not None:
            found = intercept_warnings(source, intercept, kwargs["tunnel"].peek_ports)
            kwargs["warnings"] += tuple(found)
    config = Config(**kwargs)
    _check_filters(p, config, [i for i, _, _ in entries])
    if p:
        raise ConfigError(p.lines)
    return config


def _listen(p: Problems, proxy: Mapping[str, Any]) -> tuple[str, ...]:
    """``[proxy] listen``: every endpoint string that is not valid is reported."""
    check.unknown(p, "proxy", proxy, ("listen", "watch_config", "proxy_protocol_from"))
    if "listen" not in proxy:
        return ()
    listen = proxy["listen"]
    if isinstance(listen, str):
        listen = [listen]
    if not isinstance(listen, list) or not listen or not all(isinstance(s, str) for s in listen):
        p.add("proxy.listen", 'expected a non-empty list of endpoint strings like "tcp:3128"')
        return ()
    for i, s in enumerate(listen):
        err = validate_endpoint(s)
        if err:
            p.add("proxy.listen", f"{s!r} is not a valid endpoint: {err}", ("proxy", "listen", i))
    return tuple(listen)


def _senders(
    p: Problems, proxy: Mapping[str, Any], listen: Sequence[str], source: str
) -> HeaderSenders | str:
    """``[proxy] proxy_protocol_from``, or (the key absent) the warning to give if a
    ``haproxy:`` listener then takes a PROXY header from any peer ("" if none does)."""
    key = "proxy.proxy_protocol_from"
    if "proxy_protocol_from" not in proxy:
        haproxy = open_listeners(listen)
        if not haproxy:
            return ""
        return any_peer_warning(f"{source}: proxy.listen:", haproxy[0])
    values = proxy["proxy_protocol_from"]
    if not isinstance(values, list):
        p.add(key, 'expected a list of networks like ["10.0.0.0/24"] ([]: no peer may)')
        return HeaderSenders()
    senders, problems = parse_senders(values)
    for i, message in problems:
        p.add(key, message, ("proxy", "proxy_protocol_from", i))
    return senders


def _admin(p: Problems, section: Mapping[str, Any], directory: str | None) -> dict[str, Any]:
    """The valid values of ``[admin]``: ``listen``, a list of endpoint strings (possibly empty:
    no admin listener), and ``metrics_dir``, an existing writable directory (relative to
    ``directory``, the configuration file's)."""
    check.unknown(p, "admin", section, ("listen", "metrics_dir"))
    values: dict[str, Any] = {}
    if "listen" in section:
        listen = section["listen"]
        if isinstance(listen, str):
            listen = [listen]
        if not isinstance(listen, list) or not all(isinstance(s, str) for s in listen):
            p.add("admin.listen", 'expected a list of endpoint strings like "tcp:9128" ([]: off)')
        else:
            for i, s in enumerate(listen):
                err = validate_endpoint(s)
                if err:
                    p.add(
                        "admin.listen",
                        f"{s!r} is not a valid endpoint: {err}",
                        ("admin", "listen", i),
                    )
            values["listen"] = tuple(listen)
            values["listen_required"] = True
    if "metrics_dir" in section:
        d = section["metrics_dir"]
        if not isinstance(d, str) or not d or any(c in d for c in "\r\n\0"):
            p.add("admin.metrics_dir", "expected the path of a writable directory")
            return values
        if directory is not None:
            d = os.path.join(directory, d)  # an absolute path stays what it is
        if not os.path.isdir(d):
            p.add("admin.metrics_dir", f"directory {d!r} does not exist")
        elif not os.access(d, os.W_OK | os.X_OK):
            p.add("admin.metrics_dir", f"directory {d!r} is not writable")
        else:
            values["metrics_dir"] = d
    return values


def _check_filters(p: Problems, config: Config, indices: Sequence[int]) -> None:
    """Find and trial-build every filter, so a bad name or option fails before listening.

    A built-in's options are a section of the file (``[headers]``, ``[log]``), checked one key
    at a time when they fail together, so that each bad key is reported; a ``[[filters]]``
    entry's problem is reported as its own."""
    from twisted.internet.testing import MemoryReactorClock

    from fwproxy.plugins import FilterContext, find_factory

    context = FilterContext(MemoryReactorClock(), config)
    for spec in config.builtin_filters:
        factory = find_factory(spec.name)
        errors = [e for e in [_build_error(factory, spec.options, context)] if e]
        if errors and len(spec.options) > 1:
            one_by_one = (_build_error(factory, {k: v}, context) for k, v in spec.options.items())
            errors = [e for e in one_by_one if e] or errors
        for error in errors:
            p.add_error(error, spec.name)
    for i, spec in zip(indices, config.filters, strict=True):
        try:
            factory = find_factory(spec.name)
        except LookupError as e:
            p.add(f"filters[{i}]", str(e))
            continue
        problem = _build_error(factory, spec.options, context)
        if problem:
            p.add(f"filters[{i}]", str(problem))


def _build_error(factory: Any, options: Mapping[str, Any], context: Any) -> Exception | None:
    """What building a filter raises for bad options, if anything."""
    try:
        factory.build(options, context)
    except (LookupError, ValueError, TypeError) as e:
        return e
    return None


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
