"""``proxy_protocol_access`` as ``[proxy] proxy_protocol_from``
(:mod:`fwproxy.squidconf.proxyproto`), and the note on ``localport`` behind a PROXY header."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.squidconf import config, data, run

from fwproxy.proxyheader import HeaderSenders, parse_senders

PORTS = "http_port 3128\nhttp_port 3130 require-proxy-header\n"
RULES = "acl office src 10.1.0.0/16\nhttp_access allow office\nhttp_access deny all\n"


def senders(*networks: str) -> HeaderSenders:
    return parse_senders(networks)[0]


def test_allow_lines_of_src_acls_become_their_networks(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        PORTS
        + "acl lb src 127.0.0.1\nacl lbs src 10.0.1.0/24 10.0.2.5 10.0.3.1-10.0.3.2\n"
        + "proxy_protocol_access allow lb\nproxy_protocol_access allow lbs\n"
        + "proxy_protocol_access allow localhost\nproxy_protocol_access deny all\n"
        + RULES,
    )
    assert result.exit_code == 0 and result.errors == []
    nets = ["127.0.0.1/32", "10.0.1.0/24", "10.0.2.5/32", "10.0.3.1/32", "10.0.3.2/32", "::1/128"]
    assert data(result)["proxy"]["proxy_protocol_from"] == nets
    assert config(result).proxy_protocol_from == senders(*nets)
    assert not [m for m in result.messages if "proxy_protocol" in m]


def test_allow_all_lets_every_peer_send(tmp_path: Path) -> None:
    result = run(tmp_path, PORTS + "proxy_protocol_access allow all\n" + RULES)
    assert data(result)["proxy"]["proxy_protocol_from"] == ["0.0.0.0/0", "::/0"]
    assert config(result).proxy_protocol_from == senders("0.0.0.0/0", "::/0")


def test_no_line_means_nobody_as_in_squid_with_a_note(tmp_path: Path) -> None:
    result = run(tmp_path, PORTS + RULES)
    assert result.exit_code == 0
    assert data(result)["proxy"]["proxy_protocol_from"] == []
    assert config(result).proxy_protocol_from == HeaderSenders()
    [note] = [m for m in result.messages if "proxy_protocol_access" in m]
    assert note.startswith(f"{tmp_path / 'squid.conf'}:2: http_port: require-proxy-header")
    assert "Squid lets no peer send a PROXY header" in note


def test_without_a_proxied_port_the_lines_change_nothing(tmp_path: Path) -> None:
    result = run(tmp_path, "http_port 3128\nproxy_protocol_access allow all\n" + RULES)
    assert result.exit_code == 0 and "proxy_protocol_from" not in data(result).get("proxy", {})
    assert any("no http_port has require-proxy-header" in m for m in result.messages)


def test_deny_all_ends_the_list(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        PORTS + "acl lb src 10.0.0.1\nproxy_protocol_access allow lb\n"
        "proxy_protocol_access deny all\nproxy_protocol_access allow all\n" + RULES,
    )
    assert result.exit_code == 0
    assert data(result)["proxy"]["proxy_protocol_from"] == ["10.0.0.1/32"]
    [note] = [m for m in result.messages if "never reached" in m]
    assert ":6: proxy_protocol_access: never reached" in note
    assert note.endswith("squid.conf:5 decides first")


@pytest.mark.parametrize(
    "lines",
    [
        "acl lb src 10.0.0.1\nproxy_protocol_access deny lb\nproxy_protocol_access allow all\n",
        "acl lb src 10.0.0.1\nproxy_protocol_access allow !lb\n",
        "acl lb src 10.0.0.1\nacl p port 80\nproxy_protocol_access allow lb p\n",
        "acl p myportname 3130\nproxy_protocol_access allow p\n",
        "acl d dstdomain .example.com\nproxy_protocol_access allow d\n",
    ],
)
def test_other_lines_decide_access_and_are_errors(tmp_path: Path, lines: str) -> None:
    result = run(tmp_path, PORTS + lines + RULES)
    assert result.exit_code == 1
    assert [e for e in result.errors if "proxy_protocol_access: not translated" in e]
    forced = run(tmp_path, PORTS + lines + RULES, force=True)
    assert forced.exit_code == 0 and "(dropped: --force)" in "".join(forced.errors)
    config(forced)


def test_bad_lines_are_errors(tmp_path: Path) -> None:
    result = run(tmp_path, PORTS + "proxy_protocol_access permit all\n" + RULES)
    assert result.exit_code == 1
    assert any("expected allow or deny" in e for e in result.errors)
    result = run(tmp_path, PORTS + "proxy_protocol_access allow nosuch\n" + RULES)
    assert any("'nosuch' is not defined" in e for e in result.errors)


def test_localport_behind_a_proxy_header_gets_a_note(tmp_path: Path) -> None:
    text = "acl lp localport 8443\nacl old myport 3130\nhttp_access deny lp\nhttp_access deny old\n"
    result = run(tmp_path, PORTS + "proxy_protocol_access allow all\n" + text + RULES)
    notes = [m for m in result.messages if "the port the PROXY header names" in m]
    assert [n.split(": ")[0].rsplit(":", 1)[1] for n in notes] == ["4", "5"]
    assert result.exit_code == 0
    plain = run(tmp_path, "http_port 3128\n" + text + RULES)
    assert not [m for m in plain.messages if "the port the PROXY header names" in m]
