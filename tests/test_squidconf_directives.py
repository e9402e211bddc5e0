"""The directives around the access rules (:mod:`fwproxy.squidconf.ports`, ``logging``,
``auth``, ``peers``, ``headers``, ``directives``): each snippet's exact TOML, and what is
dropped with which reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.squidconf import config, data, run

ALLOW = "http_access allow localhost\n"


def test_ports(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        "http_port 3128\nhttp_port 127.0.0.1:3129\nhttp_port [::1]:3130\n"
        "http_port 3131 require-proxy-header\n" + ALLOW,
    )
    assert data(result)["proxy"]["listen"] == [
        "tcp:3128",
        "tcp:3129:interface=127.0.0.1",
        "tcp6:3130:interface=\\:\\:1",
        "haproxy:tcp:3131",
    ]
    assert result.exit_code == 0
    config(result)


def test_https_port(tmp_path: Path) -> None:
    result = run(
        tmp_path, "https_port 3129 tls-cert=/etc/squid/p.pem tls-key=/etc/squid/p.key\n" + ALLOW
    )
    assert data(result)["proxy"]["listen"] == [
        "ssl:3129:privateKey=/etc/squid/p.key:certKey=/etc/squid/p.pem"
    ]


@pytest.mark.parametrize("mode", ["intercept", "tproxy", "accel"])
def test_interception_ports_are_errors(tmp_path: Path, mode: str) -> None:
    result = run(tmp_path, f"http_port 3129 {mode}\n" + ALLOW)
    assert result.exit_code == 1 and mode in result.errors[0]


def test_bad_port_is_an_error(tmp_path: Path) -> None:
    assert run(tmp_path, "http_port 99999\n" + ALLOW).exit_code == 1
    assert run(tmp_path, "http_port\n" + ALLOW).exit_code == 1


@pytest.mark.parametrize(
    "lines, log",
    [
        (
            "access_log /var/log/squid/access.log\n",
            {"access": "/var/log/squid/access.log", "format": "squid"},
        ),
        ("access_log stdio:/tmp/a.log combined\n", {"access": "/tmp/a.log", "format": "combined"}),
        (
            'logformat j {"t":"%ts","u":"%ru"}\naccess_log daemon:/tmp/j.log logformat=j\n',
            {"access": "/tmp/j.log", "format": "json"},
        ),
        (
            "logformat mine %ts %>a %ru\naccess_log /tmp/m.log mine\n",
            {"access": "/tmp/m.log", "format": "squid"},
        ),
        ("access_log none\n", {"access": "/dev/null"}),
    ],
)
def test_access_log(tmp_path: Path, lines: str, log: dict[str, str]) -> None:
    result = run(tmp_path, lines + ALLOW)
    assert data(result)["log"] == log
    assert result.exit_code == 0
    config(result)


def test_access_log_acl_that_is_no_format_name(tmp_path: Path) -> None:
    # Squid reads a first word that names no log format as the first ACL (cache_cf.cc)
    result = run(tmp_path, "access_log /var/log/squid/access.log !CONNECT\n" + ALLOW)
    assert data(result)["log"] == {"access": "/var/log/squid/access.log", "format": "squid"}
    assert not any("unknown log format" in m for m in result.messages)
    assert any(
        "logging only some requests (!CONNECT): fwproxy logs all" in m for m in result.messages
    )


def test_custom_format_is_noted(tmp_path: Path) -> None:
    result = run(tmp_path, "logformat mine %ts %>a %ru\naccess_log /tmp/m.log mine\n" + ALLOW)
    assert any(
        "custom logformat mine: fwproxy's nearest built-in, squid, used" in m
        for m in result.messages
    )


def test_md5_htpasswd_says_how_to_rehash(tmp_path: Path) -> None:
    pw = tmp_path / "passwd"
    pw.write_text("alice:$apr1$abc$def\nbob:$2y$05$abcdefghijklmnopqrstuu\ncarol:abCDefGhiJkLm\n")
    result = run(tmp_path, f"auth_param basic program /usr/lib/squid/basic_ncsa_auth {pw}\n")
    assert any(
        f"2 entries (alice, carol) are MD5 or DES-crypt, which fwproxy refuses: set each "
        f"again with htpasswd -B {pw} USER" in m
        for m in result.messages
    )
    assert result.exit_code == 0


@pytest.mark.parametrize(
    "line",
    [
        "auth_param basic program /usr/lib/squid/basic_ldap_auth -b dc=x ldap.example",
        "auth_param digest program /usr/lib/squid/digest_file_auth /etc/squid/digest",
        "auth_param negotiate program /usr/lib/squid/negotiate_kerberos_auth",
    ],
)
def test_other_authentication_is_an_error(tmp_path: Path, line: str) -> None:
    result = run(tmp_path, line + "\n" + ALLOW)
    assert result.exit_code == 1


def test_parents_and_routing(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        "acl intranet dstdomain .corp.example\n"
        "cache_peer proxy.corp.example parent 3128 0 no-query name=corp\n"
        "cache_peer 10.0.0.9 parent 8080 0 ssl connect-fail-limit=5\n"
        "cache_peer_access corp allow intranet\n"
        "always_direct allow localhost\nnever_direct allow all\n" + ALLOW,
    )
    assert result.exit_code == 0, result.messages
    assert data(result)["parents"] == {
        "corp": {"address": "proxy.corp.example:3128"},
        "peer_10.0.0.9": {"address": "10.0.0.9:8080", "tls": True, "max_failures": 5},
    }
    assert data(result)["routing"]["rules"] == [
        "direct localhost",
        # an intranet request may use both (corp first, 10.0.0.9 when corp fails), as in Squid
        "parent corp,peer_10.0.0.9 intranet",
        "parent peer_10.0.0.9 all",
    ]
    config(result)


def test_restricted_parents_fail_over_to_each_other_where_both_are_allowed(
    tmp_path: Path,
) -> None:
    # Squid tries every parent a request may use, in cache_peer order: a request allowed to
    # both must get both, one allowed to one only that one
    result = run(
        tmp_path,
        "acl eu dstdomain .eu.example\nacl api dstdomain .api.example\n"
        "cache_peer one.example parent 3128 0 name=one\n"
        "cache_peer two.example parent 3128 0 name=two\n"
        "cache_peer_access one allow eu\ncache_peer_access one allow api\n"
        "cache_peer_access two allow api\n"
        "never_direct allow all\n" + ALLOW,
    )
    assert result.exit_code == 0, result.messages
    assert data(result)["routing"]["rules"] == [
        "parent one,two eu api",
        "parent one,two api",
        "parent one eu",
        "parent one api",
        "parent two api",
        "parent one,two all",
    ]
    config(result)


def test_parent_without_never_direct_is_noted(tmp_path: Path) -> None:
    result = run(tmp_path, "cache_peer up.example parent 3128 0 login=u:p\n" + ALLOW)
    assert data(result)["routing"]["rules"] == ["parent up.example all"]
    assert any("login=" in m for m in result.messages)
    assert any("Squid goes direct when its parents fail" in m for m in result.messages)


def test_headers(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        "forwarded_for truncate\nvia off\nvisible_hostname proxy.corp\n"
        "request_header_access X-Secret deny all\n"
        "request_header_access Referer deny localhost\n"
        "reply_header_access Server deny all\n"
        'request_header_add X-Proxy "fw yes"\n' + ALLOW,
    )
    assert data(result)["headers"] == {
        "forwarded_for": "truncate",
        "via": False,
        "via_name": "proxy.corp",
        "remove_request": ["X-Secret"],
        "remove_response": ["Server"],
        "add_request": {"X-Proxy": "fw yes"},
    }
    assert any(
        "Referer" not in m and "request_header_access: not translated" in m for m in result.messages
    )
    config(result)


def test_timeouts(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        "connect_timeout 30 seconds\nread_timeout 15 minutes\n"
        "request_timeout 1 minute\nclient_idle_pconn_timeout 2 minutes\n"
        "shutdown_lifetime 10\n" + ALLOW,
    )
    assert data(result)["timeouts"] == {
        "connect": 30,
        "read": 900,
        "request_header": 60,
        "client_idle": 120,
        "drain": 10,
    }
    config(result)


def test_bad_timeout_is_an_error(tmp_path: Path) -> None:
    assert run(tmp_path, "connect_timeout soon\n" + ALLOW).exit_code == 1


@pytest.mark.parametrize(
    "line, reason, code",
    [
        ("cache_dir ufs /var/spool/squid 100 16 256", "fwproxy does not cache", 0),
        ("refresh_pattern . 0 20% 4320", "fwproxy does not cache", 0),
        ("workers 4", "a process setting; with fwproxy: fwproxy run --workers N", 0),
        (
            "pid_filename /run/squid.pid",
            "a process setting; with fwproxy: twistd --pidfile FILE",
            0,
        ),
        ("dns_nameservers 8.8.8.8", "no fwproxy equivalent; it changes no access decision", 0),
        ("client_lifetime 1 day", "no fwproxy equivalent; it changes no access decision", 0),
        ("frobnicate yes", "unknown directive", 0),
        ("external_acl_type t %SRC /bin/check", "external ACL helpers", 1),
        ("url_rewrite_program /bin/rw", "URL rewriting", 1),
        ("http_reply_access deny all", "access decided on the reply", 1),
    ],
)
def test_untranslated_directives(tmp_path: Path, line: str, reason: str, code: int) -> None:
    result = run(tmp_path, line + "\n" + ALLOW)
    name = line.split()[0]
    assert result.messages[0].startswith(
        f"{tmp_path / 'squid.conf'}:1: {name}: not translated ({reason}"
    )
    assert result.exit_code == code
    assert run(tmp_path, line + "\n" + ALLOW, force=True).exit_code == 0


@pytest.mark.parametrize(
    "line, limit",
    [
        ("request_body_max_size 10 MB", 10 * 1024**2),
        ("request_body_max_size 512 KB", 524288),
        ("request_body_max_size 0", 0),
        ("request_body_max_size none", 0),
    ],
)
def test_request_body_max_size(tmp_path: Path, line: str, limit: int) -> None:
    result = run(tmp_path, line + "\n" + ALLOW)
    assert data(result)["limits"] == {"max_body_size": limit}
    assert config(result).limits.max_body_size == limit


def test_request_body_max_size_for_some_requests_is_an_error(tmp_path: Path) -> None:
    some = run(tmp_path, "request_body_max_size 10 MB localhost\n" + ALLOW)
    assert some.exit_code == 1 and "a body limit for some requests only" in some.errors[0]
    assert run(tmp_path, "request_body_max_size ten\n" + ALLOW).exit_code == 1


def test_squid_3_to_localhost_is_fwproxys(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        "acl to_localhost dst 127.0.0.0/8 0.0.0.0/32 ::1\nhttp_access deny to_localhost\n" + ALLOW,
    )
    assert "acl" not in data(result) or "squid_to_localhost" not in data(result)["acl"]
    assert data(result)["access"]["rules"][:4] == [
        "deny to_linklocal",
        "deny to_localhost",
        "deny to_self",
        "allow localhost",
    ]
