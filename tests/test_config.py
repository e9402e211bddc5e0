"""Tests for :mod:`fwproxy.config` and ``fwproxy check-config`` (:mod:`fwproxy.cli`)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from fwproxy.acl import AclContext, client_ip, predefined
from fwproxy.cli import main
from fwproxy.config import (
    DEFAULT_NAME,
    Config,
    ConfigError,
    default_text,
    load,
    loads,
    parse,
)
from fwproxy.configcheck import LINKLOCAL
from fwproxy.rules import AccessPolicy

MAIN = Path(__file__).resolve().parent.parent
ETC = MAIN / "etc" / "fwproxy.toml"
REFERENCE = MAIN.parent / "shared" / "conformance" / "fwproxy-reference.toml"

# The seed squid.conf's http_access lines translated literally (its open-proxy mistake kept).
SEED_LITERAL = """\
[proxy]
listen = ["tcp:3128"]

[acl.localhost]
src = ["127.0.0.1/32", "::1/128"]

[acl.allowed_ips]
src = ["203.0.113.7/32"]

[acl.safe_ports]
port = ["1-65535"]

[acl.ssl_ports]
port = [443]

[acl.connect]
method = ["CONNECT"]

[access]
rules = [
  "allow localhost",
  "allow allowed_ips",
  "allow safe_ports",
  "allow connect ssl_ports",
  "deny all",
]
"""


def ctx(client: str, method: str = "GET", port: int = 80, addr: str = "93.184.216.34"):
    return AclContext(
        client=client_ip(client),
        method=method,
        host="example.com",
        port=port,
        url="http://example.com/",
        addresses=(client_ip(addr),),  # type: ignore[arg-type]
    )


def problems(text: str, source: str = "t.toml") -> list[str]:
    with pytest.raises(ConfigError) as e:
        loads(text, source)
    assert str(e.value) == "\n".join(e.value.problems)
    return e.value.problems


def open_warnings(config: Config) -> list[str]:
    return [w for w in config.warnings if "open proxy" in w]


# -- good configurations ---------------------------------------------------------------------


def test_embedded_default_loads_and_is_safe():
    config = load()
    assert config.source == DEFAULT_NAME
    assert config.listen == ("tcp:3128:interface=127.0.0.1",)
    assert config.warnings == ()
    p = config.access
    assert p.allows(ctx("127.0.0.1"))
    assert p.allows(ctx("::1"))
    assert not p.allows(ctx("192.0.2.1"))
    assert not p.allows(ctx("127.0.0.1", addr="169.254.169.254"))
    assert not p.allows(ctx("127.0.0.1", "CONNECT", 22))
    assert p.allows(ctx("127.0.0.1", "CONNECT", 443))
    assert config.headers == {"forwarded_for": "delete", "via": False}
    assert config.log == {"access": "-", "format": "squid"}
    assert [f.name for f in config.all_filters] == ["acl", "headers", "accesslog"]


def test_default_text_is_what_load_reads():
    assert "[access]" in default_text()
    texts = [r.text for r in loads(default_text()).access.rules]
    assert texts == [r.text for r in load().access.rules]
    assert texts[-1] == "deny all"


def test_etc_config_loads_without_warnings():
    config = load(str(ETC))
    assert config.source == str(ETC)
    assert config.listen == ("tcp:3128",)
    assert config.warnings == ()
    assert config.timeouts.connect == 10.0
    p = config.access
    assert p.allows(ctx("203.0.113.7"))
    assert p.allows(ctx("::ffff:203.0.113.7"))
    assert not p.allows(ctx("198.51.100.1"))  # the seed's open-proxy mistake is fixed
    assert not p.allows(ctx("203.0.113.7", addr="169.254.169.254"))
    assert not p.allows(ctx("203.0.113.7", addr="127.0.0.1"))
    assert not p.allows(ctx("203.0.113.7", "CONNECT", 8443))


@pytest.mark.skipif(not REFERENCE.exists(), reason="no shared conformance reference config")
def test_reference_config_loads():
    config = load(str(REFERENCE))
    assert open_warnings(config) == []
    assert config.listen == ("tcp:13130:interface=127.0.0.1",)
    assert config.timeouts.upstream_first_byte == 5.0
    p = config.access
    assert p.allows(ctx("127.0.0.1"))
    assert not p.allows(ctx("127.0.0.1", addr="127.0.0.3"))
    assert p.allows(ctx("127.0.0.1", "CONNECT", 18443))
    assert not p.allows(ctx("10.0.0.1"))


def test_config_values_are_typed():
    config = loads(
        "[timeouts]\nconnect = 3\nread = 1.5\n[limits]\nmax_headers = 50\n"
        "[pool]\nmax_idle_per_host = 0\nidle_timeout = 2\n"
    )
    assert config.timeouts.connect == 3.0 and isinstance(config.timeouts.connect, float)
    assert config.timeouts.read == 1.5
    assert config.limits.max_headers == 50
    assert config.pool.max_idle_per_host == 0
    assert config.pool.idle_timeout == 2.0
    assert isinstance(config.access, AccessPolicy)


def test_no_access_table_denies_everything():
    config = loads("")
    assert [r.text for r in config.access.rules] == ["deny all"]
    assert not config.access.allows(ctx("127.0.0.1"))


def test_config_is_immutable():
    config = loads("")
    with pytest.raises(AttributeError):
        config.listen = ("tcp:1",)  # type: ignore[misc]
    other = config.with_listen(["tcp:8080"])
    assert other.listen == ("tcp:8080",) and config.listen != other.listen


def test_filters_entries():
    config = loads(
        '[[filters]]\nname = "headers"\noptions = {via = true}\n\n[[filters]]\nname = "accesslog"\n'
    )
    assert [(f.name, dict(f.options)) for f in config.filters] == [
        ("headers", {"via": True}),
        ("accesslog", {}),
    ]
    assert [f.name for f in config.all_filters] == [
        "acl",
        "headers",
        "accesslog",
        "headers",
        "accesslog",
    ]


# -- errors: one line each, naming file:line, key and problem --------------------------------

ERRORS = [
    pytest.param("[bogus]\nx = 1\n", 1, "bogus", "unknown key", id="unknown-section"),
    pytest.param(
        "[timeouts]\nconnect = 1\nfoo = 2\n", 3, "timeouts.foo", "unknown key", id="unknown-key"
    ),
    pytest.param("[proxy]\nport = 3128\n", 2, "proxy.port", "unknown key", id="unknown-proxy-key"),
    pytest.param("[access]\nrule = []\n", 2, "access.rule", "unknown key", id="unknown-access-key"),
    pytest.param(
        '# c\n\n[acl.lan]\nsrc = ["10.0.0.0/33"]\n',
        4,
        "acl.lan.src",
        "'10.0.0.0/33' is not an IP address or CIDR network",
        id="bad-cidr",
    ),
    pytest.param(
        '[acl]\nlan = {src = ["nope"]}\n', 2, "acl.lan.src", "'nope' is not an IP", id="inline-acl"
    ),
    pytest.param(
        '[acl.r]\nurl_regex = ["("]\n',
        2,
        "acl.r.url_regex",
        "bad regular expression '('",
        id="bad-regex",
    ),
    pytest.param(
        '[acl.r]\ndstdom_regex = ["a**"]\n',
        2,
        "acl.r.dstdom_regex",
        "bad regular expression",
        id="bad-domain-regex",
    ),
    pytest.param(
        "[acl.p]\nport = [70000]\n", 2, "acl.p.port", "'70000' is out of range", id="port-range"
    ),
    pytest.param("[acl.p]\nport = [0]\n", 2, "acl.p.port", "'0' is out of range", id="port-zero"),
    pytest.param(
        '[acl.p]\nport = ["http"]\n', 2, "acl.p.port", "is not a port or range", id="port-name"
    ),
    pytest.param('[acl.t]\ntime = ["X 09:00"]\n', 2, "acl.t.time", "is not like", id="bad-time"),
    pytest.param('[acl.t]\nfoo = ["x"]\n', 2, "acl.t", "unknown type 'foo'", id="unknown-acl-type"),
    pytest.param(
        '[acl.t]\nsrc = ["10.0.0.0/8"]\nport = [80]\n',
        1,
        "acl.t",
        "expected exactly one type",
        id="two-types",
    ),
    pytest.param(
        '[acl.all]\nsrc = ["10.0.0.0/8"]\n', 1, "acl.all", "predefined", id="redefine-predefined"
    ),
    pytest.param(
        '[access]\nrules = [\n  "allow nope",\n]\n',
        3,
        "access.rules",
        "'allow nope' uses ACL 'nope', which is not defined",
        id="undefined-acl",
    ),
    pytest.param(
        '[access]\nrules = ["permit all"]\n',
        2,
        "access.rules",
        'must start with "allow" or "deny"',
        id="bad-action",
    ),
    pytest.param(
        '[access]\nrules = ["allow"]\n', 2, "access.rules", "names no ACL", id="rule-without-acl"
    ),
    pytest.param(
        '[access]\nrules = "allow all"\n',
        2,
        "access.rules",
        "expected a list of strings",
        id="rules-not-a-list",
    ),
    pytest.param(
        '[headers]\nforwarded_for = "maybe"\n',
        2,
        "headers.forwarded_for",
        "'maybe' is not one of on, off, transparent, truncate, delete",
        id="bad-forwarded-for",
    ),
    pytest.param(
        '[headers]\nvia = "yes"\n', 2, "headers.via", "expected true or false", id="bad-via"
    ),
    pytest.param(
        '[headers]\nset_request = {X-A = "\u20ac"}\n',
        2,
        "headers.set_request.X-A",
        "Latin-1",
        id="header-value-not-latin1",
    ),
    pytest.param(
        '[headers]\nremove_request = ["Caf\u00e9"]\n',
        2,
        "headers.remove_request",
        "expected a list of header names",
        id="header-name-not-ascii",
    ),
    pytest.param(
        '[timeouts]\nconnect = "ten"\n',
        2,
        "timeouts.connect",
        "expected a number, got 'ten'",
        id="timeout-type",
    ),
    pytest.param(
        "[timeouts]\nread = -1\n", 2, "timeouts.read", "must be greater than 0", id="negative"
    ),
    pytest.param(
        "[timeouts]\nread = 0\n", 2, "timeouts.read", "must be greater than 0", id="zero-timeout"
    ),
    pytest.param(
        "[timeouts]\nread = true\n", 2, "timeouts.read", "expected a number", id="bool-timeout"
    ),
    pytest.param("[timeouts]\nconnect = nan\n", 2, "timeouts.connect", "finite", id="nan-timeout"),
    pytest.param("[timeouts]\nconnect = inf\n", 2, "timeouts.connect", "finite", id="inf-timeout"),
    pytest.param(
        "[limits]\nmax_headers = 1.5\n",
        2,
        "limits.max_headers",
        "expected a whole number",
        id="limit-float",
    ),
    pytest.param(
        "[limits]\nmax_headers = 0\n", 2, "limits.max_headers", "at least 1", id="limit-zero"
    ),
    pytest.param(
        "[pool]\nmax_idle_per_host = -1\n",
        2,
        "pool.max_idle_per_host",
        "at least 0",
        id="pool-negative",
    ),
    pytest.param(
        '[proxy]\nlisten = ["bogus:1"]\n',
        2,
        "proxy.listen",
        "'bogus:1' is not a valid endpoint",
        id="listen-unknown-type",
    ),
    pytest.param(
        '[proxy]\nlisten = ["tcp:notaport"]\n',
        2,
        "proxy.listen",
        "'tcp:notaport' is not a valid endpoint",
        id="listen-bad-port",
    ),
    pytest.param(
        '[proxy]\nlisten = ["tcp:99999"]\n',
        2,
        "proxy.listen",
        "out of range",
        id="listen-port-out-of-range",
    ),
    pytest.param(
        '[proxy]\nlisten = ["tcp:3128:foo=bar"]\n',
        2,
        "proxy.listen",
        "is not a valid endpoint",
        id="listen-bad-option",
    ),
    pytest.param(
        "[proxy]\nlisten = []\n", 2, "proxy.listen", "expected a non-empty list", id="listen-empty"
    ),
    pytest.param("proxy = 1\n", 1, "proxy", "expected a table", id="section-not-a-table"),
    pytest.param(
        '[log]\nformat = "xml"\n',
        2,
        "log.format",
        "'xml' is not one of squid, combined, json",
        id="log-format",
    ),
    pytest.param("[log]\nfoo = 1\n", 2, "log.foo", "unknown key", id="log-unknown-key"),
    pytest.param(
        '[log]\naccess = "/nonexistent/dir/access.log"\n',
        2,
        "log.access",
        "does not exist",
        id="log-directory",
    ),
    pytest.param(
        '[log]\nformat = "squid"\n\n[[filters]]\nname = "acl"\n\n[[filters]]\nname = "nosuch"\n',
        7,
        "filters[1]",
        "filter 'nosuch': not a built-in",
        id="unknown-filter",
    ),
    pytest.param(
        '[[filters]]\nname = "nosuch.module.thing"\n',
        1,
        "filters[0]",
        "cannot import it",
        id="unimportable-filter",
    ),
    pytest.param(
        '[[filters]]\nname = "headers"\noptions = {forwarded_for = "x"}\n',
        1,
        "filters[0]",
        "'x' is not one of",
        id="bad-filter-options",
    ),
    pytest.param(
        "[[filters]]\noptions = {}\n", 1, "filters[0]", "needs name", id="filter-without-name"
    ),
]


@pytest.mark.parametrize("text, line, key, fragment", ERRORS)
def test_each_error_is_one_line_naming_file_line_key_and_problem(text, line, key, fragment):
    (problem,) = problems(text)
    assert "\n" not in problem
    assert problem.startswith(f"t.toml:{line}: {key}: "), problem
    assert fragment in problem


@pytest.mark.parametrize(
    "text, line",
    [
        ('[proxy]\nlisten = [\n"x"\n\nfoo = \n', 5),
        ("a = 1\nb = \n", 2),
        ("[proxy\n", 1),
        ("[timeouts]\nconnect = 1\nconnect = 2\n", 3),
    ],
)
def test_toml_syntax_error_names_the_line(text, line):
    (problem,) = problems(text)
    assert problem.startswith(f"t.toml:{line}: invalid TOML: ")
    assert "\n" not in problem


def test_several_problems_are_all_reported():
    text = '[timeouts]\nconnect = -1\n[acl.a]\nsrc = ["x"]\n[headers]\nvia = 1\n'
    found = problems(text)
    assert len(found) == 3
    assert [p.split(": ")[1] for p in found] == ["timeouts.connect", "acl.a.src", "headers.via"]


# Eight kinds of mistake in one file, sections out of their usual order.
MANY_ERRORS = """\
[log]
format = "xml"

[headers]
via = "yes"
forwarded_for = "maybe"

[acl.ports]
port = [
  80,
  70000,
  "http",
]

[acl.lan]
src = ["10.0.0.0/33"]

[access]
rules = [
  "allow lan ports",
  "allow lan nope also_nope",
  "permit all",
]

[timeouts]
connect = -1

[proxy]
listen = ["tcp:3128", "tcp:99999", "bogus:1"]

[[filters]]
options = {}

[[filters]]
name = "nosuch"
"""


def test_every_problem_is_reported_once_in_line_order():
    found = problems(MANY_ERRORS)
    assert [(int(p.split(":")[1]), p.split(": ")[1]) for p in found] == [
        (2, "log.format"),
        (5, "headers.via"),
        (6, "headers.forwarded_for"),
        (11, "acl.ports.port"),
        (12, "acl.ports.port"),
        (16, "acl.lan.src"),
        (21, "access.rules"),
        (22, "access.rules"),
        (26, "timeouts.connect"),
        (29, "proxy.listen"),
        (29, "proxy.listen"),
        (31, "filters[0]"),
        (34, "filters[1]"),
    ]
    assert len(set(found)) == len(found)
    text = "\n".join(found)
    assert "'xml' is not one of" in found[0]
    assert "'70000' is out of range" in found[3] and "'http' is not a port" in found[4]
    assert "'nope', 'also_nope', which are not defined" in found[6]
    assert "'lan'" not in text.replace("acl.lan", "")  # defined, invalid: not "undefined"
    assert "'tcp:99999'" in found[9] and "'bogus:1'" in found[10] and "'tcp:3128'" not in text
    assert "filter 'nosuch'" in found[12]


def test_a_bad_log_format_is_reported_with_other_problems():
    found = problems('[acl.a]\nsrc = ["x"]\n[log]\nformat = "xml"\n')
    assert [p.split(": ")[1] for p in found] == ["acl.a.src", "log.format"]


def test_a_problem_is_reported_once_when_found_twice():
    # the [headers] table fails as a whole and key by key: the same line is not repeated
    assert problems('[headers]\nvia = 1\nvia_name = "fwproxy"\n') == [
        "t.toml:2: headers.via: expected true or false, not 1"
    ]


def test_each_bad_key_of_a_builtin_section_is_named():
    found = problems('[log]\nformat = "xml"\naccess = "/nonexistent/dir/x.log"\n')
    assert [p.split(": ")[1] for p in found] == ["log.format", "log.access"]


@pytest.mark.parametrize(
    "kind, values, bad",
    [
        ("port", ["80", "70000", '"http"', '"1-2-3"'], [1, 2, 3]),
        ("src", ['"10.0.0.0/8"', '"nope"', '"::1/129"'], [1, 2]),
        ("url_regex", ['"("', '"ok"', '"["'], [0, 2]),
        ("method", ['"GET"', '"BAD METHOD"', '"P/T"'], [1, 2]),
        ("time", ['"MTWHF 09:00-17:00"', '"X"', '"25:00-26:00"'], [1, 2]),
    ],
)
def test_every_bad_value_of_an_acl_list_is_named_at_its_line(kind, values, bad):
    text = "\n".join([f"[acl.x]\n{kind} = ["] + [f"  {v}," for v in values] + ["]\n"])
    found = problems(text)
    assert len(found) == len(bad), found
    for problem, i in zip(found, bad, strict=True):
        value = repr(values[i].strip('"'))
        assert problem.startswith(f"t.toml:{3 + i}: acl.x.{kind}: "), problem
        assert value in problem, (value, problem)


def test_a_list_that_is_bad_as_a_whole_is_one_problem():
    assert problems("[acl.x]\nport = []\n") == ["t.toml:2: acl.x.port: expected a non-empty list"]


@pytest.mark.parametrize(
    "acl",
    [
        'src = ["10.0.0.0/33"]',  # a bad value
        'bogus = ["x"]',  # an unknown type
        'src = ["10.0.0.0/8"]\nport = [80]',  # two types
    ],
)
def test_an_invalid_acl_is_not_also_undefined(acl):
    text = f'[acl.lan]\n{acl}\n[access]\nrules = ["allow lan", "allow !lan nope"]\n'
    found = problems(text)
    assert found[:-1] and all(": acl.lan" in p for p in found[:-1]), found
    line = len(text.splitlines())
    assert found[-1] == (
        f"t.toml:{line}: access.rules: 'allow !lan nope' uses ACL 'nope', which is not defined"
    )


def test_a_dotted_acl_name_is_found_at_its_line():
    found = problems('[acl.ok]\nsrc = ["10.0.0.1"]\n\n[acl."a.b"]\nsrc = ["x"]\n')
    assert found == ["t.toml:5: acl.a.b.src: 'x' is not an IP address or CIDR network"]


def test_filters_keep_their_index_after_an_entry_without_a_name():
    found = problems('[[filters]]\nfoo = 1\n\n[[filters]]\nname = "nosuch"\n')
    assert [p.split(": ")[:2] for p in found] == [
        ["t.toml:1", "filters[0]"],
        ["t.toml:4", "filters[1]"],
    ]


def test_without_the_text_problems_have_no_line_and_keep_their_order():
    with pytest.raises(ConfigError) as e:
        parse({"timeouts": {"connect": -1}, "bogus": 1}, "x.toml")
    assert e.value.problems == [
        "x.toml: bogus: unknown key (known: proxy, timeouts, limits, pool, tunnel, auth, tls, acl, "
        "access, headers, log, filters, parents, routing, admin, intercept)",
        "x.toml: timeouts.connect: must be greater than 0, got -1",
    ]


def test_load_names_the_file(tmp_path):
    path = tmp_path / "proxy.toml"
    path.write_text('[acl.lan]\nsrc = ["10.0.0.0/33"]\n')
    with pytest.raises(ConfigError) as e:
        load(str(path))
    assert e.value.problems == [
        f"{path}:2: acl.lan.src: '10.0.0.0/33' is not an IP address or CIDR network"
    ]


def test_load_missing_file(tmp_path):
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as e:
        load(str(path))
    (problem,) = e.value.problems
    assert problem.startswith(f"{path}: cannot read: ")


def test_load_not_utf8(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError) as e:
        load(str(path))
    assert e.value.problems[0].startswith(f"{path}: not UTF-8 text")


# -- the open-proxy warning ------------------------------------------------------------------


def test_seed_squid_policy_translated_literally_warns_about_open_rules():
    config = loads(SEED_LITERAL, "seed.toml")
    assert open_warnings(config) == [
        (
            "seed.toml: access.rules: 'allow safe_ports' admits clients from any source address "
            "(no src or proxy_auth ACL in it): this makes an open proxy"
        ),
        (
            "seed.toml: access.rules: 'allow connect ssl_ports' admits clients from any source "
            "address (no src or proxy_auth ACL in it): this makes an open proxy"
        ),
    ]
    # and it is right: a stranger is served
    assert config.access.allows(ctx("198.51.100.1"))


@pytest.mark.parametrize(
    "rules, n_open",
    [
        ('["allow all"]', 1),
        ('["allow !localhost"]', 1),
        ('["allow localhost", "deny all"]', 0),
        ('["deny all"]', 0),
        ('["allow everyone"]', 1),  # src 0.0.0.0/0 restricts nothing
    ],
)
def test_open_proxy_warning(rules, n_open):
    text = (
        '[acl.localhost]\nsrc = ["127.0.0.1"]\n[acl.everyone]\nsrc = ["0.0.0.0/0"]\n'
        f"[access]\nrules = {rules}\n"
    )
    assert len(open_warnings(loads(text))) == n_open


def linklocal_warnings(config: Config) -> list[str]:
    return [w for w in config.warnings if "link-local" in w]


LINKLOCAL_ACLS = """\
[acl.localhost]
src = ["127.0.0.1/32"]
[acl.local_origins]
dst = ["127.0.0.1/32"]
[acl.public]
dst = ["0.0.0.0/0"]
[acl.metadata]
dst = ["169.254.169.254/32"]
[acl.v6_origins]
dst = ["2001:db8::/32", "fe00::/9"]
[acl.v6_all]
dst = ["::/0"]
[acl.not_ll]
dst = ["169.254.0.0/15", "fe80::/9", "fd00:ec2::/32"]
[acl.ssl]
port = [443]
"""


@pytest.mark.parametrize(
    "rules, warned",
    [
        # allowed only to destinations that are not link-local: no warning
        (["allow localhost local_origins", "deny all"], None),
        (["allow localhost v6_origins", "deny all"], None),
        (["allow localhost to_localhost", "deny all"], None),
        (["allow localhost ssl local_origins", "deny all"], None),
        (["allow localhost !to_linklocal", "deny all"], None),
        (["allow localhost !not_ll", "deny all"], None),  # a negated dst covering link-local
        (["deny to_linklocal", "allow localhost", "deny all"], None),
        (["deny not_ll", "allow localhost", "deny all"], None),
        (["deny all"], None),
        # can reach link-local: a warning naming the rule
        (["allow localhost", "deny to_linklocal", "deny all"], "allow localhost"),
        (["allow localhost ssl", "deny all"], "allow localhost ssl"),
        (["allow localhost public", "deny all"], "allow localhost public"),
        (["allow localhost metadata", "deny all"], "allow localhost metadata"),
        # to_private's fc00::/7 holds the IPv6 metadata service fd00:ec2::254
        (["allow localhost to_private", "deny all"], "allow localhost to_private"),
        (["allow localhost v6_all", "deny all"], "allow localhost v6_all"),
        (["allow localhost !local_origins", "deny all"], "allow localhost !local_origins"),
        (["allow localhost local_origins", "allow localhost"], "allow localhost"),
        (["deny !to_linklocal", "allow localhost"], "allow localhost"),
        (["deny to_linklocal ssl", "allow localhost ssl"], "allow localhost ssl"),
    ],
)
def test_linklocal_warning(rules, warned):
    text = LINKLOCAL_ACLS + f"[access]\nrules = {rules!r}\n".replace("'", '"')
    found = linklocal_warnings(loads(text, "ll.toml"))
    if warned is None:
        assert found == []
    else:
        assert found == [
            f"ll.toml: access.rules: {warned!r} lets clients reach link-local destinations (the "
            'cloud metadata service 169.254.169.254): put "deny to_linklocal" before it'
        ]


def test_linklocal_warning_is_right_about_what_clients_reach():
    for rules in (
        ["allow localhost local_origins", "deny all"],
        ["allow localhost", "deny to_linklocal", "deny all"],
        ["allow localhost to_private", "deny all"],
    ):
        config = loads(LINKLOCAL_ACLS + f"[access]\nrules = {rules!r}\n".replace("'", '"'))
        reached = [
            addr
            for addr in ("169.254.169.254", "fe80::1", "fd00:ec2::254")
            if config.access.allows(ctx("127.0.0.1", addr=addr))
        ]
        assert bool(reached) == bool(linklocal_warnings(config)), (rules, reached)


def test_linklocal_is_what_to_linklocal_denies():
    assert predefined()["to_linklocal"].networks == LINKLOCAL  # type: ignore[attr-defined]


# -- fwproxy check-config --------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "fwproxy.toml"
    path.write_text(text)
    return str(path)


def test_cli_ok(capsys):
    assert main(["check-config", str(ETC)]) == 0
    out, err = capsys.readouterr()
    n = len(load(str(ETC)).access.rules)
    assert out == f"{ETC}: OK ({n} rules, listening on tcp:3128)\n"
    assert err == ""


def test_cli_default(capsys):
    assert main(["check-config"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{DEFAULT_NAME}: OK (")
    assert "tcp:3128:interface=127.0.0.1" in out
    assert err == ""


def test_cli_errors_go_to_stderr_one_per_line(tmp_path, capsys):
    path = write(tmp_path, '[timeouts]\nconnect = -1\n[acl.a]\nsrc = ["x"]\n')
    assert main(["check-config", path]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 2
    assert all(re.match(re.escape(path) + r":\d+: \S+: ", line) for line in lines)


def test_cli_reports_every_problem_in_line_order(tmp_path, capsys):
    path = write(tmp_path, MANY_ERRORS)
    assert main(["check-config", path]) == 1
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and len(lines) == 13
    numbers = [int(re.match(re.escape(path) + r":(\d+): \S+: ", line)[1]) for line in lines]
    assert numbers == sorted(numbers) and numbers[0] == 2 and numbers[-1] == 34


def test_cli_toml_error(tmp_path, capsys):
    path = write(tmp_path, "[proxy\n")
    assert main(["check-config", path]) == 1
    _, err = capsys.readouterr()
    assert err.startswith(f"{path}:1: invalid TOML")


def test_cli_missing_file(tmp_path, capsys):
    assert main(["check-config", str(tmp_path / "nope.toml")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "cannot read" in err


@pytest.mark.parametrize("strict, code", [(False, 0), (True, 1)])
def test_cli_warnings(tmp_path, capsys, strict, code):
    path = write(tmp_path, SEED_LITERAL)
    argv = ["check-config", path] + (["--strict"] if strict else [])
    assert main(argv) == code
    out, err = capsys.readouterr()
    warnings = [line for line in err.splitlines() if "open proxy" in line]
    assert len(warnings) == 2
    assert all(line.startswith(f"warning: {path}: access.rules: ") for line in warnings)
    assert ("OK" in out) is (not strict)


def test_cli_strict_without_warnings(capsys):
    assert main(["check-config", "--strict", str(ETC)]) == 0
    assert "OK" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [[], ["nosuch"], ["check-config", "a", "b"]])
def test_cli_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "usage: fwproxy" in capsys.readouterr().err


def test_cli_reads_relative_paths_from_the_working_directory(tmp_path, capsys, monkeypatch):
    write(tmp_path, '[access]\nrules = ["deny all"]\n')
    monkeypatch.chdir(tmp_path)
    assert main(["check-config", "fwproxy.toml"]) == 0
    assert capsys.readouterr().out.startswith("fwproxy.toml: OK (1 rules")
    assert os.getcwd() == str(tmp_path)


# -- [tls] ---------------------------------------------------------------------------------------


def ca_pem(directory: Path, name: str = "ca.pem") -> Path:
    """A self-signed CA certificate (and its key beside it) made here."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test clients CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = directory / name
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_tls_section_is_typed_and_paths_are_relative_to_the_file(tmp_path):
    ca_pem(tmp_path)
    path = write(tmp_path, '[tls]\nclient_ca_file = "ca.pem"\nclient_cert = "required"\n')
    config = load(path)
    assert config.tls.client_ca_file == str(tmp_path / "ca.pem")
    assert config.tls.client_cert == "required"
    assert load(write(tmp_path, '[tls]\nclient_ca_file = "ca.pem"\n')).tls.client_cert == (
        "optional"
    )
    assert loads("").tls.client_ca_file is None


@pytest.mark.parametrize(
    "text, line, key, fragment",
    [
        ('[tls]\nclient_cert = "sometimes"\n', 2, "tls.client_cert", 'expected "optional" or'),
        ('[tls]\nclient_cert = "required"\n', 2, "tls.client_cert", "needs tls.client_ca_file"),
        ('[tls]\nclient_ca_file = ""\n', 2, "tls.client_ca_file", "expected the path of a PEM"),
        ("[tls]\nclient_ca_file = 3\n", 2, "tls.client_ca_file", "expected the path of a PEM"),
        (
            '[tls]\nclient_ca_file = "missing.pem"\n',
            2,
            "tls.client_ca_file",
            "missing.pem: cannot read the client_ca_file: No such file or directory",
        ),
        (
            '[tls]\nclient_ca_file = "fwproxy.toml"\n',
            2,
            "tls.client_ca_file",
            "fwproxy.toml: no PEM certificate in it (the client_ca_file)",
        ),
        ("[tls]\n\nca_cert = 1\n", 3, "tls.ca_cert", "unknown key (known: client_ca_file, "),
        (
            '[acl.team]\nclient_cert = ["a.example"]\n[access]\nrules = ["allow team"]\n',
            1,
            "acl.team",
            "a client_cert ACL needs [tls] client_ca_file",
        ),
        ('[proxy]\nlisten = ["ssl:3129"]\n', 2, "proxy.listen", "no privateKey=FILE"),
        (
            '[proxy]\nlisten = ["ssl:3129:privateKey=nope.pem"]\n',
            2,
            "proxy.listen",
            "nope.pem: cannot read the private key: No such file or directory",
        ),
    ],
)
def test_tls_errors_are_one_line_naming_file_line_key(
    tmp_path, monkeypatch, text, line, key, fragment
):
    path = write(tmp_path, text)
    monkeypatch.chdir(tmp_path)  # the ssl: endpoint's files are relative to the working directory
    with pytest.raises(ConfigError) as e:
        load(path)
    (problem,) = e.value.problems
    assert problem.startswith(f"{path}:{line}: {key}: "), problem
    assert fragment in problem and "\n" not in problem


def test_check_config_knows_the_tls_keys(tmp_path, capsys):
    ca_pem(tmp_path)
    text = (
        '[tls]\nclient_ca_file = "ca.pem"\nclient_cert = "optional"\n'
        '[acl.lan]\nsrc = ["10.0.0.0/8"]\n[acl.team]\nclient_cert = [".clients.example"]\n'
        '[access]\nrules = ["allow lan team", "deny all"]\n'
    )
    assert main(["check-config", write(tmp_path, text)]) == 0
    assert main(["check-config", write(tmp_path, '[tls]\nclient_cert = "no"\n')]) == 1
    err = capsys.readouterr().err
    assert re.search(r":2: tls.client_cert: expected \"optional\" or \"required\", got 'no'", err)
