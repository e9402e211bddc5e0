"""``fwproxy convert-squid`` end to end: the story's squid.conf, the command line, and inputs
of every kind converted without a traceback (a corpus of odd files, and random lines)."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.squidconf import FLOOR, config, rules, run

from fwproxy import cli
from fwproxy.config import loads
from fwproxy.squidconf import Conversion, convert

REPO = Path(__file__).resolve().parent.parent
SEED = REPO.parent / "shared" / "reference" / "seed-squid.conf"
STORY = """\
http_access allow localhost
acl allowed_ips src xxx.xxx.xxx.xxx
http_access allow allowed_ips
acl Safe_ports port 1-65535          # all ports
acl SSL_ports port 443
acl CONNECT method CONNECT
http_access allow Safe_ports
http_access allow CONNECT SSL_ports
http_access deny all
http_port 3128
cache deny all
cache_mem 0 MB
maximum_object_size_in_memory 0 KB
cache_dir null /tmp
access_log /var/log/squid/access.log
cache_log /var/log/squid/cache.log
coredump_dir /var/spool/squid
"""


def story(tmp_path: Path) -> str:
    text = SEED.read_text() if SEED.exists() else STORY
    return text.replace("xxx.xxx.xxx.xxx", "203.0.113.7")


def test_story_converts_and_check_config_flags_the_open_proxy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run(tmp_path, story(tmp_path))
    assert result.exit_code == 0 and result.errors == []
    assert rules(result) == [
        *FLOOR,
        "allow localhost",
        "allow allowed_ips",
        "allow Safe_ports",
        "allow CONNECT SSL_ports",
        "deny all",
    ]
    out = tmp_path / "fwproxy.toml"
    out.write_text(result.toml)
    assert cli.main(["check-config", str(out)]) == 0
    err = capsys.readouterr().err
    assert (
        f"warning: {out}: access.rules: 'allow Safe_ports' admits clients from any source "
        "address (no src or proxy_auth ACL in it): this makes an open proxy"
    ) in err
    assert cli.main(["check-config", "--strict", str(out)]) == 1


def test_story_as_written_is_an_error(tmp_path: Path) -> None:
    text = SEED.read_text() if SEED.exists() else STORY
    result = run(tmp_path, text)
    assert result.exit_code == 1
    assert len(result.errors) == 2  # the value, and the rule that uses it


def test_cli_stdout_and_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "squid.conf"
    conf.write_text(story(tmp_path))
    assert cli.main(["convert-squid", str(conf)]) == 0
    out, err = capsys.readouterr()
    assert loads(out).access.rules[3].text == "allow localhost"
    assert f"{conf}:28: cache_dir: not translated (fwproxy does not cache)" in err.splitlines() or (
        "cache_dir: not translated (fwproxy does not cache)" in err
    )
    assert cli.main(["convert-squid", "--no-guard", str(conf)]) == 0
    assert "deny to_linklocal" not in capsys.readouterr().out


def test_cli_output_file_only_on_success(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf, out = tmp_path / "squid.conf", tmp_path / "out.toml"
    conf.write_text("acl a src nonsense\nhttp_access allow a\n")
    assert cli.main(["convert-squid", str(conf), "-o", str(out)]) == 1
    assert not out.exists()
    assert "error" in capsys.readouterr().err
    assert cli.main(["convert-squid", str(conf), "-o", str(out), "--force"]) == 0
    assert loads(out.read_text()).access.rules[-1].text == "deny all"
    out.write_text("old")
    conf.write_text("http_access allow localhost\n")
    assert cli.main(["convert-squid", str(conf), "-o", str(out)]) == 0
    assert "allow localhost" in out.read_text()


def test_cli_unwritable_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "squid.conf"
    conf.write_text("http_access allow localhost\n")
    assert cli.main(["convert-squid", str(conf), "-o", str(tmp_path / "no" / "x.toml")]) == 1
    assert "cannot write" in capsys.readouterr().err


ODD = [
    "",
    "\n\n\n",
    "\\",
    "acl\n",
    "acl a\n",
    "acl a src\nhttp_access allow a\n",
    "http_access\n",
    "http_access allow !\n",
    "http_access allow !!a\n",
    'acl a dstdomain "\n',
    'acl a dstdomain ""\nhttp_access deny a\n',
    "acl a src 10.0.0.0/8 \\",
    "acl a port -\nhttp_access deny a\n",
    "acl a port 5-\nhttp_access deny a\n",
    "acl a time\nhttp_access deny a\n",
    "acl a time 25:00-26:00\nhttp_access deny a\n",
    "acl a url_regex [[:nope:]]\nhttp_access deny a\n",
    "acl a url_regex -i\nhttp_access deny a\n",
    "acl a dstdomain .\nhttp_access deny a\n",
    "acl a src ::ffff:1.2.3.4/200\nhttp_access deny a\n",
    "http_port :\nhttps_port 443\nhttp_port abc:def\n",
    "cache_peer\ncache_peer a parent x\ncache_peer_access x allow all\nnever_direct\n",
    "auth_param\nauth_param basic\nauth_param basic credentialsttl x\n",
    "logformat\naccess_log\naccess_log udp://1.2.3.4:514\naccess_log /a\naccess_log /b\n",
    "forwarded_for maybe\nvia sometimes\nvisible_hostname\nrequest_header_add\n",
    "request_header_access\nreply_header_access X allow\n",
    "connect_timeout\nread_timeout 1 2 3\nrequest_timeout -1\nshutdown_lifetime nan\n",
    "ssl_bump\nssl_bump peek\nssl_bump splice nosuch\n",
    "acl a src 10.0.0.1\x00\nhttp_access allow a\n",
    # Squid 2.x
    "acl all src 0.0.0.0/0.0.0.0\nacl manager proto cache_object\n"
    "acl localhost src 127.0.0.1/255.255.255.255\nacl to_localhost dst 127.0.0.0/8\n"
    "http_access allow manager localhost\nhttp_access deny manager\n"
    "http_access allow localhost\nhttp_access deny all\nicp_access allow all\n"
    "cache_effective_user squid\nredirect_program /bin/rw\nhttp_port 3128 transparent\n",
]


def _sane(result: Conversion) -> None:
    assert result.exit_code in (0, 1)
    assert set(result.errors) <= set(result.messages)
    if result.exit_code == 0:
        import tomllib

        tomllib.loads(result.toml)


@pytest.mark.parametrize("text", ODD)
def test_odd_inputs(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> None:
    for force in (False, True):
        _sane(run(tmp_path, text, force=force))
    conf = tmp_path / "squid.conf"
    assert cli.main(["convert-squid", str(conf)]) in (0, 1)
    assert "Traceback" not in capsys.readouterr().err


def test_old_squid_2_config(tmp_path: Path) -> None:
    result = run(tmp_path, ODD[-1], force=True)
    assert rules(result) == [
        *FLOOR,
        "allow manager localhost",
        "deny manager",
        "allow localhost",
        "deny all",
    ]
    config(result)


DIRECTIVES = [
    "acl",
    "http_access",
    "http_port",
    "ssl_bump",
    "include",
    "cache_peer",
    "cache_peer_access",
    "never_direct",
    "auth_param",
    "access_log",
    "logformat",
    "request_header_access",
    "request_header_add",
    "forwarded_for",
    "via",
    "connect_timeout",
    "https_port",
    "always_direct",
    "visible_hostname",
]
WORDS = [
    "allow",
    "deny",
    "all",
    "src",
    "dst",
    "port",
    "a",
    "b",
    "!a",
    "-i",
    "10.0.0.0/8",
    "1-2",
    "basic",
    "program",
    "parent",
    "peek",
    "splice",
    "terminate",
    "*.conf",
    "time",
    "MTWHF",
    "08:00-09:00",
    "url_regex",
    "^x",
    '"f"',
    "#",
    "\\",
    "dstdomain",
    "localport",
    "myportname",
    "name=a",
    "ssl::server_name",
    ".e.com",
]
LINE = st.tuples(
    st.sampled_from(DIRECTIVES),
    st.lists(st.one_of(st.sampled_from(WORDS), st.text(string.printable, max_size=6)), max_size=6),
).map(lambda t: " ".join([t[0], *t[1]]))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(LINE, max_size=12), st.booleans(), st.booleans())
def test_random_lines_never_raise(
    tmp_path: Path, lines: list[str], force: bool, guard: bool
) -> None:
    path = tmp_path / "squid.conf"
    path.write_text("\n".join(lines) + "\n")
    result = convert(str(path), force=force, guard=guard)
    _sane(result)
    if result.exit_code == 0 and not any("include" in line for line in lines):
        # what converts cleanly loads, unless it names files (that exist where it will run,
        # not here) or ACL types this fwproxy may not have yet
        text = result.toml
        if not any(
            k in text
            for k in (
                "htpasswd",
                "localport",
                "urlpath_regex",
                "ssl:",
                "proxy_auth",
                "[log]",
                "[intercept]",
            )
        ):
            loads(text)
