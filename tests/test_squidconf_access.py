"""``http_access`` and ``ssl_bump`` as fwproxy rules (:mod:`fwproxy.squidconf.access`): the
SSRF floor, Squid's implicit last rule made explicit, negation, several ACLs, and the
peek-and-splice pattern."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.squidconf import FLOOR, acl, config, data, rules, run

from fwproxy.squidconf import conversion as convert_module

NET = "acl office src 10.0.0.0/8\nacl bad dstdomain .bad.example\n"


def test_no_http_access_denies_everything(tmp_path: Path) -> None:
    result = run(tmp_path, "http_port 3128\n")
    assert rules(result) == [*FLOOR, "deny all"]
    config(result)


def test_last_allow_implies_deny(tmp_path: Path) -> None:
    result = run(tmp_path, NET + "http_access deny bad\nhttp_access allow office\n")
    assert rules(result) == [*FLOOR, "deny bad", "allow office", "deny all"]


def test_last_deny_implies_allow(tmp_path: Path) -> None:
    result = run(tmp_path, NET + "http_access allow office\nhttp_access deny bad\n")
    assert rules(result) == [*FLOOR, "allow office", "deny bad", "allow all"]
    # and fwproxy says what that means
    assert any("'allow all' admits clients from any source" in w for w in config(result).warnings)


def test_unconditional_last_line_needs_no_default(tmp_path: Path) -> None:
    result = run(tmp_path, NET + "http_access allow office\nhttp_access deny all\n")
    assert rules(result) == [*FLOOR, "allow office", "deny all"]
    # Squid 5.7: "Access line contains no ACL's, skipping": the line does not count
    result = run(tmp_path, NET + "http_access deny bad\nhttp_access allow\n")
    assert rules(result) == [*FLOOR, "deny bad", "allow all"]
    result = run(tmp_path, NET + "http_access allow office\nhttp_access deny\n")
    assert rules(result) == [*FLOOR, "allow office", "deny all"]


def test_negation_and_several_acls(tmp_path: Path) -> None:
    result = run(tmp_path, NET + "http_access allow office !bad CONNECT\n")
    assert rules(result) == [*FLOOR, "allow office !bad CONNECT", "deny all"]
    config(result)


def test_no_guard(tmp_path: Path) -> None:
    result = run(tmp_path, NET + "http_access allow office\n", guard=False)
    assert rules(result) == ["allow office", "deny all"]


def test_undefined_acl_is_an_error_and_keeps_the_default(tmp_path: Path) -> None:
    result = run(tmp_path, NET + "http_access allow office\nhttp_access deny nosuch\n")
    assert result.exit_code == 1
    assert "ACL 'nosuch' is not defined" in result.errors[0]
    forced = run(tmp_path, NET + "http_access allow office\nhttp_access deny nosuch\n", force=True)
    assert rules(forced) == [*FLOOR, "allow office", "allow all"]


def test_bad_action_is_an_error(tmp_path: Path) -> None:
    result = run(tmp_path, "http_access permit all\n")
    assert result.exit_code == 1 and "expected allow or deny" in result.errors[0]


PEEK = (
    "acl step1 at_step SslBump1\nacl office src 10.0.0.0/8\n"
    "acl saas ssl::server_name .github.com .salesforce.com\n"
    "acl blocked ssl::server_name evil.example\n"
    "http_port 3128 ssl-bump cert=/etc/squid/ca.pem\n"
    "http_access allow office\nhttp_access deny all\n"
    "ssl_bump peek step1\n"
)


def test_peek_and_splice(tmp_path: Path) -> None:
    result = run(tmp_path, PEEK + "ssl_bump splice saas\nssl_bump terminate all\n")
    assert result.exit_code == 0, result.messages
    assert acl(result, "saas") == {"ssl_sni": [".github.com", ".salesforce.com"]}
    assert data(result)["tunnel"] == {"peek_ports": [443]}
    assert rules(result) == [*FLOOR, "deny office CONNECT !saas", "allow office", "deny all"]
    config(result)


def test_terminate_after_several_splices(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        PEEK + "ssl_bump terminate blocked\nssl_bump splice saas office\nssl_bump terminate all\n",
    )
    assert rules(result) == [
        *FLOOR,
        "deny office CONNECT blocked",
        "deny office CONNECT !blocked !saas",
        "deny office CONNECT !blocked !office",
        "allow office",
        "deny all",
    ]
    config(result)


def test_no_terminate_splices_everything(tmp_path: Path) -> None:
    result = run(tmp_path, PEEK + "ssl_bump splice all\n")
    assert rules(result) == [*FLOOR, "allow office", "deny all"]
    assert "saas" not in data(result)["acl"]


def test_old_actions(tmp_path: Path) -> None:
    result = run(tmp_path, PEEK + "ssl_bump none all\n")
    assert result.exit_code == 0
    assert any("Squid 3's 'none' read as 'splice'" in m for m in result.messages)


def test_bump_is_an_error_without_interception(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(convert_module, "can_intercept", lambda: False)
    result = run(tmp_path, PEEK + "ssl_bump bump office\nssl_bump splice all\n")
    assert result.exit_code == 1
    assert "fwproxy cannot decrypt tunnels here" in result.errors[0]


def test_unknown_ssl_bump_action(tmp_path: Path) -> None:
    result = run(tmp_path, PEEK + "ssl_bump explode all\n")
    assert result.exit_code == 1


def test_bump_becomes_intercept_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(convert_module, "can_intercept", lambda: True)
    result = run(
        tmp_path,
        PEEK + "acl bank ssl::server_name .bank.example\n"
        "ssl_bump splice bank\nssl_bump terminate blocked\n"
        "ssl_bump bump all\n",
    )
    assert result.exit_code == 0, result.messages
    assert data(result)["intercept"] == {"ca": "fwproxy-ca", "rules": ["splice bank", "bump all"]}
    assert rules(result) == [
        *FLOOR,
        "deny office CONNECT !bank blocked",
        "allow office",
        "deny all",
    ]
    note = next(m for m in result.messages if "[intercept] ca" in m)
    assert 'must be a directory made by "fwproxy ca init fwproxy-ca"' in note
    assert "Squid's tls-cert= file (/etc/squid/ca.pem) is not usable as is" in note


def test_a_rule_written_twice_is_written_once(tmp_path: Path) -> None:
    result = run(tmp_path, NET + "http_access deny to_localhost\nhttp_access allow office\n")
    assert rules(result) == [*FLOOR, "allow office", "deny all"]
    unguarded = run(
        tmp_path, NET + "http_access deny to_localhost\nhttp_access allow office\n", guard=False
    )
    assert rules(unguarded) == ["deny to_localhost", "allow office", "deny all"]


def test_server_name_in_http_access_is_the_connect_host(tmp_path: Path) -> None:
    # Squid checks http_access on the CONNECT, before any peeking: its ssl::server_name is
    # the CONNECT's host there, and the ClientHello's name only in ssl_bump
    text = PEEK.replace(
        "http_access allow office", "http_access deny blocked\nhttp_access allow office"
    )
    result = run(tmp_path, text + "ssl_bump splice saas\nssl_bump terminate all\n")
    assert acl(result, "blocked_host") == {"dstdomain": ["evil.example"]}
    assert acl(result, "saas") == {"ssl_sni": [".github.com", ".salesforce.com"]}
    assert "blocked" not in data(result)["acl"]
    assert rules(result) == [
        *FLOOR,
        "deny blocked_host",
        "deny office CONNECT !saas",
        "allow office",
        "deny all",
    ]
    config(result)


def test_ssl_bump_without_an_ssl_bump_port_decides_nothing(tmp_path: Path) -> None:
    # Squid applies ssl_bump only to CONNECTs on ssl-bump ports: a plain http_port tunnels them
    result = run(
        tmp_path,
        "http_port 3128\nacl localnet src 10.0.0.0/8\nacl step1 at_step SslBump1\n"
        "ssl_bump peek step1 all\nssl_bump terminate all\n"
        "http_access allow localnet\nhttp_access deny all\n",
    )
    assert result.exit_code == 0, result.messages
    assert rules(result) == [*FLOOR, "allow localnet", "deny all"]
    assert "tunnel" not in data(result)
    assert any(
        ":5: ssl_bump: not translated (no translated http_port has ssl-bump" in m
        for m in result.messages
    )
    config(result)


def test_ssl_bump_of_an_intercepting_port_is_not_translated(tmp_path: Path) -> None:
    # the ssl-bump port intercepts (not translated): fwproxy's port must not bump instead
    result = run(
        tmp_path,
        "https_port 3130 intercept ssl-bump cert=/etc/squid/ca.pem\n"
        "acl localnet src 10.0.0.0/8\nacl step1 at_step SslBump1\n"
        "ssl_bump peek step1 all\nssl_bump bump all\n"
        "http_access allow localnet\nhttp_access deny all\n",
    )
    assert "intercept" not in data(result)
    assert any(
        ":5: ssl_bump: not translated (no translated http_port" in m for m in result.messages
    )
