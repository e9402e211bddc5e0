"""Tests for :mod:`fwproxy.logformat` and the ``accesslog`` filter."""

from __future__ import annotations

import json
import os
import time
from types import SimpleNamespace

import pytest
from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyObject

from fwproxy.filters.accesslog import AccessLog, AccessLogFactory
from fwproxy.interfaces import IFilterFactory, IFilterLifecycle, ITransactionObserver
from fwproxy.logformat import FORMATS, as_json, combined, field, quoted, squid
from fwproxy.record import TCP_DENIED, TCP_MISS, TCP_TUNNEL, TransactionRecord


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def record(**kw) -> TransactionRecord:
    values = {
        "client": "10.0.0.1",
        "method": "GET",
        "target": "http://example.com/index.html",
        "status": 200,
        "bytes_in": 120,
        "bytes_out": 1234,
        "started": 1700000000.123,
        "duration": 0.0456,
        "upstream": "93.184.216.34:80",
        "result": TCP_MISS,
        "user": "",
        "version": "1.1",
        "content_type": "text/html; charset=utf-8",
        "referer": "http://example.com/",
        "user_agent": "curl/8.5.0",
    }
    values.update(kw)
    return TransactionRecord(**values)  # type: ignore[arg-type]


# -- the formats -----------------------------------------------------------------------------


def test_squid_format():
    assert squid(record()) == (
        "1700000000.123     45 10.0.0.1 TCP_MISS/200 1234 GET "
        "http://example.com/index.html - HIER_DIRECT/93.184.216.34 text/html"
    )


def test_squid_format_tunnel_and_denial():
    tunnel = record(
        method="CONNECT",
        target="example.com:443",
        result=TCP_TUNNEL,
        upstream="[2001:db8::1]:443",
        content_type="",
        user="alice",
        duration=12.5,
    )
    assert squid(tunnel) == (
        "1700000000.123  12500 10.0.0.1 TCP_TUNNEL/200 1234 CONNECT example.com:443 alice "
        "HIER_DIRECT/2001:db8::1 -"
    )
    denied = record(status=403, result=TCP_DENIED, upstream="", bytes_out=0, content_type="")
    assert squid(denied).split()[3:] == [
        "TCP_DENIED/403",
        "0",
        "GET",
        "http://example.com/index.html",
        "-",
        "HIER_NONE/-",
        "-",
    ]


def test_squid_status_zero_is_three_digits():
    assert " NONE_NONE/000 " in squid(record(status=0, result="NONE_NONE"))


def test_combined_format():
    assert combined(record(user="bob")) == (
        '10.0.0.1 - bob [14/Nov/2023:22:13:20 +0000] "GET http://example.com/index.html '
        'HTTP/1.1" 200 1234 "http://example.com/" "curl/8.5.0"'
    )


def test_combined_format_empty_fields():
    line = combined(record(user="", referer="", user_agent="", version="1.0"))
    assert line == (
        '10.0.0.1 - - [14/Nov/2023:22:13:20 +0000] "GET http://example.com/index.html '
        'HTTP/1.0" 200 1234 "-" "-"'
    )


def test_combined_format_local_time_offset(monkeypatch):
    monkeypatch.setenv("TZ", "XXX-05:30")  # 5h30 east of UTC
    time.tzset()
    assert "[15/Nov/2023:03:43:20 +0530]" in combined(record())
    monkeypatch.setenv("TZ", "YYY+03")  # 3h west of UTC
    time.tzset()
    assert "[14/Nov/2023:19:13:20 -0300]" in combined(record())


def test_json_format():
    obj = json.loads(as_json(record(user="bob")))
    assert obj == {
        "time": 1700000000.123,
        "duration_ms": 45,
        "client": "10.0.0.1",
        "user": "bob",
        "method": "GET",
        "target": "http://example.com/index.html",
        "version": "1.1",
        "status": 200,
        "result": "TCP_MISS",
        "bytes_in": 120,
        "bytes_out": 1234,
        "upstream": "93.184.216.34:80",
        "hierarchy": "HIER_DIRECT/93.184.216.34",
        "content_type": "text/html; charset=utf-8",
        "referer": "http://example.com/",
        "user_agent": "curl/8.5.0",
        "sni": None,
        "would_deny": None,
        "tls": None,
    }


def test_formats_registry():
    assert FORMATS == {"squid": squid, "combined": combined, "json": as_json}


# -- client-controlled fields cannot split or forge lines ------------------------------------

EVIL = [
    pytest.param("\n", id="lf"),
    pytest.param("\r\n", id="crlf"),
    pytest.param("\r", id="cr"),
    pytest.param("a b", id="space"),
    pytest.param('"', id="quote"),
    pytest.param("\\", id="backslash"),
    pytest.param("\\x0a", id="pre-escaped"),
    pytest.param("\x00", id="nul"),
    pytest.param("\t", id="tab"),
    pytest.param("\x0b\x0c", id="vt-ff"),
    pytest.param("\x1b[31mred", id="ansi"),
    pytest.param("\x1c\x1d\x1e", id="separators"),
    pytest.param("\x7f", id="del"),
    pytest.param("\x85", id="nel"),
    pytest.param("\u2028\u2029", id="unicode-line-separators"),
    pytest.param(
        "\n1700000000.000      0 6.6.6.6 TCP_MISS/200 0 GET http://forged/ - HIER_NONE/- -",
        id="forged-squid-line",
    ),
    pytest.param('" 200 0 "-" "-"\n6.6.6.6 - - [x] "GET /', id="forged-combined-line"),
]
CLIENT_FIELDS = ["method", "target", "user", "referer", "user_agent", "content_type", "client"]


@pytest.mark.parametrize("evil", EVIL)
@pytest.mark.parametrize("name", CLIENT_FIELDS)
def test_squid_line_cannot_be_split_or_forged(name, evil):
    clean = squid(record())
    line = squid(record(**{name: "x" + evil + "y"}))
    assert line.splitlines() == [line]
    assert len(line.split()) == len(clean.split()) == 10  # no field boundary added
    assert not any(c in line for c in "\x00\r\n\x1b\x7f\x85\u2028\u2029\t")


@pytest.mark.parametrize("evil", EVIL)
@pytest.mark.parametrize("name", CLIENT_FIELDS)
def test_combined_line_cannot_be_split_or_forged(name, evil):
    line = combined(record(**{name: "x" + evil + "y"}))
    assert line.splitlines() == [line]
    # the quoted fields stay three: every quote inside them is escaped
    unescaped_quotes = line.replace("\\\\", "").replace('\\"', "").count('"')
    assert unescaped_quotes == 6
    assert not any(c in line for c in "\x00\r\n\x1b\x7f\x85\u2028\u2029")


@pytest.mark.parametrize("evil", EVIL)
@pytest.mark.parametrize("name", CLIENT_FIELDS)
def test_json_line_round_trips(name, evil):
    value = "x" + evil + "y"
    line = as_json(record(**{name: value}))
    assert line.splitlines() == [line]
    assert line.isascii()
    assert json.loads(line)[name] == value


@pytest.mark.parametrize(
    "value, expected",
    [
        ("", "-"),
        ("plain", "plain"),
        ("a b", "a\\x20b"),
        ("a\nb", "a\\x0ab"),
        ('a"b', 'a\\"b'),
        ("a\\b", "a\\\\b"),
        ("\x7f\x9f", "\\x7f\\x9f"),
        ("caf\xe9", "caf\xe9"),  # printable Latin-1 is kept
        ("\u2028", "\\u2028"),
    ],
)
def test_field_escaping(value, expected):
    assert field(value) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        ("", ""),
        ("a b", "a b"),  # spaces are fine inside quotes
        ('say "hi"', 'say \\"hi\\"'),
        ("a\r\nb", "a\\x0d\\x0ab"),
        ("back\\slash", "back\\\\slash"),
    ],
)
def test_quoted_escaping(value, expected):
    assert quoted(value) == expected


def test_escaping_is_unambiguous():
    # distinct inputs give distinct outputs (a backslash in the input cannot fake an escape)
    inputs = ["\n", "\\x0a", "\\\n", "\\\\x0a", " ", "\\x20", '"', '\\"']
    assert len({field(v) for v in inputs}) == len(inputs)
    assert len({quoted(v) for v in inputs}) == len(inputs)


# -- the accesslog filter --------------------------------------------------------------------


def context(clock=None):
    return SimpleNamespace(
        reactor=clock or MemoryReactorClock(), config=None, resolver=None, listening=[]
    )


def build(path, fmt="squid", clock=None) -> tuple[AccessLog, MemoryReactorClock]:
    ctx = context(clock)
    log = AccessLogFactory.build({"access": str(path), "format": fmt}, ctx)
    return log, ctx.reactor


def test_accesslog_provides_its_interfaces(tmp_path):
    log, _ = build(tmp_path / "a.log")
    assert verifyObject(ITransactionObserver, log)
    assert verifyObject(IFilterLifecycle, log)
    assert verifyObject(IFilterFactory, AccessLogFactory)
    assert AccessLogFactory.name == "accesslog"


def test_building_opens_nothing(tmp_path):
    build(tmp_path / "a.log")
    assert os.listdir(tmp_path) == []


def test_start_opens_for_appending(tmp_path):
    path = tmp_path / "a.log"
    path.write_text("old line\n")
    log, clock = build(path)
    log.startFilter()
    log.transactionFinished(record())
    clock.advance(0)
    assert path.read_text().splitlines() == ["old line", squid(record())]
    log.stopFilter()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_lines_are_batched_until_the_reactor_turn_ends(tmp_path, fmt):
    path = tmp_path / "a.log"
    log, clock = build(path, fmt)
    log.startFilter()
    records = [record(target=f"http://example.com/{i}") for i in range(3)]
    for r in records:
        log.transactionFinished(r)
    assert path.read_text() == ""
    assert len(clock.getDelayedCalls()) == 1  # one flush per turn, not one per line
    clock.advance(0)
    assert path.read_text() == "".join(FORMATS[fmt](r) + "\n" for r in records)
    assert clock.getDelayedCalls() == []
    log.transactionFinished(record(target="http://example.com/late"))
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert path.read_text().splitlines()[-1] == FORMATS[fmt](
        record(target="http://example.com/late")
    )
    log.stopFilter()


def test_a_line_per_transaction_even_with_hostile_fields(tmp_path):
    path = tmp_path / "a.log"
    log, clock = build(path, "squid")
    log.startFilter()
    log.transactionFinished(record(target="http://x/\r\nforged", user_agent="\n\n"))
    log.transactionFinished(record(user="\u2028evil \ud800"))  # a lone surrogate too
    clock.advance(0)
    log.stopFilter()
    data = path.read_bytes()
    assert data.count(b"\n") == 2
    assert data.decode("utf-8").splitlines()[0].endswith("text/html")


def test_file_is_opened_lazily_when_not_started(tmp_path):
    path = tmp_path / "a.log"
    log, clock = build(path)
    log.transactionFinished(record())
    clock.advance(0)
    assert path.read_text() == squid(record()) + "\n"
    log.stopFilter()


def test_stop_flushes_pending_lines(tmp_path):
    path = tmp_path / "a.log"
    log, clock = build(path)
    log.startFilter()
    log.transactionFinished(record())
    log.stopFilter()
    assert path.read_text() == squid(record()) + "\n"
    clock.advance(0)  # the scheduled flush finds nothing left to write
    assert path.read_text() == squid(record()) + "\n"


def test_reopen_after_rotation_writes_a_new_file(tmp_path):
    path = tmp_path / "access.log"
    rotated = tmp_path / "access.log.1"
    log, clock = build(path)
    log.startFilter()
    log.transactionFinished(record(target="http://example.com/before"))
    clock.advance(0)
    os.rename(path, rotated)
    log.transactionFinished(record(target="http://example.com/pending"))
    log.reopen()
    log.transactionFinished(record(target="http://example.com/after"))
    clock.advance(0)
    log.stopFilter()
    old = rotated.read_text().splitlines()
    new = path.read_text().splitlines()
    assert [line.split()[6] for line in old] == [
        "http://example.com/before",
        "http://example.com/pending",  # what was pending goes to the old file, not lost
    ]
    assert [line.split()[6] for line in new] == ["http://example.com/after"]


def test_write_errors_are_reported_not_raised(tmp_path, capsys):
    path = tmp_path / "a.log"
    log, clock = build(path)
    log.startFilter()
    log._file.close()  # type: ignore[union-attr]
    log.transactionFinished(record())
    clock.advance(0)
    assert f"fwproxy: access log {path}: " in capsys.readouterr().err


def test_stdout(capfd):
    log, clock = build("-")
    log.startFilter()
    log.transactionFinished(record())
    clock.advance(0)
    log.stopFilter()
    assert capfd.readouterr().out == squid(record()) + "\n"


def test_factory_defaults():
    log = AccessLogFactory.build({}, context())
    assert log.path == "-"
    assert log.format is squid


@pytest.mark.parametrize(
    "options, message",
    [
        ({"fmt": "squid"}, "log.fmt: unknown key"),
        ({"format": "xml"}, "log.format: 'xml' is not one of squid, combined, json"),
        ({"access": ""}, "log.access: expected a file path"),
        ({"access": 1}, "log.access: expected a file path"),
        ({"access": "/nonexistent/dir/a.log"}, "log.access: directory '/nonexistent/dir'"),
    ],
)
def test_factory_option_errors(options, message):
    with pytest.raises(ValueError) as e:
        AccessLogFactory.build(options, context())
    assert str(e.value).startswith(message)
