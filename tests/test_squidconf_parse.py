"""Reading a squid.conf as Squid does (:mod:`fwproxy.squidconf.parse`): continuations, CRLF,
comments, quoted file values, ``include`` with globs; and the message lines of
:mod:`fwproxy.squidconf.report`."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.squidconf import acl, rules, run

from fwproxy.squidconf.parse import Directive, logical_lines, read_directives, tokenize
from fwproxy.squidconf.report import Report


def test_tokens_and_trailing_comments() -> None:
    assert tokenize("acl Safe_ports port 80          # http") == ["acl", "Safe_ports", "port", "80"]
    assert tokenize("  # a comment line") == []
    # '#' inside a token is not a comment (Squid: only at the start of a token)
    assert tokenize("url_regex a#b") == ["url_regex", "a#b"]
    assert tokenize('acl w dstdomain "/etc/squid/my list.txt"') == [
        "acl",
        "w",
        "dstdomain",
        '"/etc/squid/my list.txt"',
    ]


def test_continuations_and_crlf() -> None:
    text = "acl a src 10.0.0.1 \\\r\n  10.0.0.2\r\nhttp_access allow a\r\n"
    assert logical_lines(text)[:2] == [
        (1, "acl a src 10.0.0.1    10.0.0.2"),
        (3, "http_access allow a"),
    ]


def test_directive_names_are_lower_case_only(tmp_path: Path) -> None:
    (tmp_path / "s.conf").write_text("HTTP_Access allow all\n")
    (d,) = read_directives(str(tmp_path / "s.conf"), Report())
    assert d == Directive(str(tmp_path / "s.conf"), 1, "HTTP_Access", ("allow", "all"))
    # Squid 5.7: "unrecognized: 'HTTP_Access'", and the line is ignored
    result = run(tmp_path, "http_access allow localhost\nHttp_Access allow all\n")
    assert rules(result)[3:] == ["allow localhost", "deny all"]
    assert result.exit_code == 0
    assert (
        "Http_Access: not translated (Squid knows its directives in lower case only"
        in (result.messages[0])
    )


def test_include_glob_in_order(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "20-b.conf").write_text("acl b src 10.0.0.2\n")
    (tmp_path / "conf.d" / "10-a.conf").write_text("acl a src 10.0.0.1\n")
    result = run(tmp_path, "include conf.d/*.conf\nhttp_access allow a\nhttp_access allow b\n")
    assert result.exit_code == 0, result.messages
    assert rules(result)[3:] == ["allow a", "allow b", "deny all"]


def test_include_loop_is_an_error(tmp_path: Path) -> None:
    result = run(tmp_path, "include squid.conf\nhttp_access allow localhost\n")
    assert result.exit_code == 1
    assert any("nest deeper" in m for m in result.errors)


def test_include_of_a_missing_file(tmp_path: Path) -> None:
    result = run(tmp_path, "include /nonexistent/squid-extra.conf\n")
    assert result.exit_code == 1
    assert result.errors[0].endswith(
        "squid.conf:1: include: error: cannot read /nonexistent/squid-extra.conf: "
        "No such file or directory"
    )


def test_values_from_a_quoted_file(tmp_path: Path) -> None:
    (tmp_path / "white.txt").write_text(".example.com\n# a comment\nfoo.org  # trailing\n\n")
    result = run(tmp_path, 'acl w dstdomain "white.txt"\nhttp_access allow localhost w\n')
    assert result.exit_code == 0, result.messages
    assert acl(result, "w") == {"dstdomain": [".example.com", "foo.org"]}


def test_missing_values_file_is_an_error(tmp_path: Path) -> None:
    result = run(tmp_path, 'acl w dstdomain "nope.txt"\nhttp_access allow w\n')
    assert result.exit_code == 1
    assert any("cannot read the values file nope.txt" in e for e in result.errors)


def test_unreadable_file_exits_1_even_forced(tmp_path: Path) -> None:
    from fwproxy.squidconf import convert

    result = convert(str(tmp_path / "absent.conf"), force=True)
    assert result.exit_code == 1 and result.toml == ""
    assert result.messages == [
        f"{tmp_path / 'absent.conf'}: cannot read "
        f"{tmp_path / 'absent.conf'}: No such file or directory"
    ]


def test_latin1_file(tmp_path: Path) -> None:
    path = tmp_path / "squid.conf"
    path.write_bytes(b"# caf\xe9\nhttp_access allow localhost\n")
    from fwproxy.squidconf import convert

    assert convert(str(path)).exit_code == 0


def test_messages_follow_the_reading_order(tmp_path: Path) -> None:
    (tmp_path / "inc.conf").write_text("cache_mem 0 MB\n")
    result = run(
        tmp_path,
        "acl r dstdom_regex Capital\ninclude inc.conf\ncache_dir null /tmp\nhttp_access deny r\n",
    )
    # the note about line 1 is found when the rules are written, after everything was read
    assert [m.split(": ")[0].rsplit("/", 1)[1] for m in result.messages] == [
        "squid.conf:1",
        "inc.conf:1",
        "squid.conf:3",
    ]


def test_a_converter_bug_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fwproxy.squidconf.headers import Headers

    def broken(self: Headers, d: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(Headers, "via", broken)
    result = run(tmp_path, "via on\nhttp_access allow localhost\n")
    assert result.exit_code == 1
    assert result.errors == [
        f"{tmp_path / 'squid.conf'}:1: via: error: cannot be converted (RuntimeError: boom)"
    ]
