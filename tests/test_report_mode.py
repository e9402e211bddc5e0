"""Report-only mode (``[access] mode = "report"``): the rules' verdicts sans-IO
(:meth:`fwproxy.rules.AccessPolicy.verdict`), whole requests through a proxy in memory, the
``would_deny`` field of every log format, the metric, and the configuration."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from fwproxy.config import ConfigError, loads
from fwproxy.logformat import as_json, combined, squid
from fwproxy.record import TransactionRecord
from fwproxy.rules import DENIED_BY, IMPLICIT_DENY, WOULD_DENY
from fwproxy.testing import Harness, get, status_of

RULES = """
[acl.localhost]
src = ["127.0.0.0/8"]
[acl.ssl_ports]
port = [443]
[acl.connect]
method = ["CONNECT"]
[acl.blocked]
dstdomain = [".blocked.test"]
[access]
mode = "{mode}"
rules = [
  "deny to_linklocal",
  "deny blocked",
  "deny connect !ssl_ports",
  "allow localhost",
  "deny to_private",
  "deny all",
]
"""

REPORT, ENFORCE = RULES.format(mode="report"), RULES.format(mode="enforce")
OUTSIDER = ("192.0.2.50", 40000)


def _send(h: Harness, data: bytes, peer: tuple[str, int] = OUTSIDER):  # type: ignore[no-untyped-def]
    c = h.connect(peer)
    c.send(data)
    return c


@pytest.mark.parametrize(
    "peer, request_, rule",
    [
        (OUTSIDER, get(b"http://example.com/"), "deny all"),
        (OUTSIDER, get(b"http://www.blocked.test/"), "deny blocked"),
        (("127.0.0.1", 1), b"CONNECT example.com:8443 HTTP/1.1\r\n\r\n", "deny connect !ssl_ports"),
    ],
)
def test_what_the_rules_deny_is_relayed_and_noted(peer, request_, rule):
    with Harness(REPORT) as h:
        h.resolver.answers["www.blocked.test"] = ["198.51.100.9"]
        c = _send(h, request_, peer)
        assert c.received() == b"" and len(h.attempts) == 1  # on its way upstream
        c.lost()
        (record,) = h.records
        assert record.notes[WOULD_DENY] == rule
        assert DENIED_BY not in record.notes
    with Harness(ENFORCE) as h:  # the same, enforced
        h.resolver.answers["www.blocked.test"] = ["198.51.100.9"]
        c = _send(h, request_, peer)
        assert status_of(c.received()) == 403 and h.attempts == []
        assert h.records[0].notes[DENIED_BY] == rule
        assert WOULD_DENY not in h.records[0].notes


def test_an_allowed_request_is_not_noted():
    with Harness(REPORT) as h:
        c = _send(h, get(b"http://example.com/"), ("127.0.0.1", 1))
        assert len(h.attempts) == 1
        c.lost()
        assert WOULD_DENY not in h.records[0].notes


@pytest.mark.parametrize(
    "target, answers, rule",
    [
        (b"http://169.254.169.254/latest/", {}, "deny to_linklocal"),
        (b"http://[64:ff9b::a9fe:a9fe]/", {}, "deny to_linklocal"),
        # a guard below the rule that decides still denies: "deny all" would only be reported
        (b"http://10.0.0.5/", {}, "deny to_private"),
        (b"http://intranet.test/", {"intranet.test": ["10.0.0.5"]}, "deny to_private"),
    ],
)
def test_the_ssrf_guard_stays_enforced(target, answers, rule):
    with Harness(REPORT) as h:
        h.resolver.answers.update(answers)
        c = _send(h, get(target))
        assert status_of(c.received()) == 403
        assert h.attempts == []
        assert h.records[0].notes[DENIED_BY] == rule
        assert WOULD_DENY not in h.records[0].notes


def test_only_the_addresses_no_guard_denies_are_used():
    with Harness(REPORT) as h:
        h.resolver.answers["mixed.test"] = ["10.0.0.5", "93.184.216.34"]
        c = _send(h, get(b"http://mixed.test/"))
        ((host, port, *_),) = h.attempts
        assert (host, port) == ("93.184.216.34", 80)
        c.lost()
        assert h.records[0].notes[WOULD_DENY] == "deny all"


def test_no_rule_matching_is_reported_as_the_implicit_deny():
    config = '[acl.nobody]\nsrc = ["203.0.113.1/32"]\n[access]\nmode = "report"\nrules = ["allow nobody"]\n'
    with Harness(config) as h:
        c = _send(h, get(b"http://example.com/"))
        c.lost()
        assert h.records[0].notes[WOULD_DENY] == IMPLICIT_DENY


def test_authentication_stays_enforced(tmp_path: Path):
    sha = base64.b64encode(hashlib.sha1(b"pw").digest()).decode()
    users = tmp_path / "users"
    users.write_text(f"alice:{{SHA}}{sha}\n")
    config = (
        f'[auth]\nhtpasswd = "{users}"\n[acl.users]\nproxy_auth = ["REQUIRED"]\n'
        '[acl.blocked]\ndstdomain = ["blocked.test"]\n'
        '[access]\nmode = "report"\nrules = ["deny blocked", "allow users", "deny all"]\n'
    )
    with Harness(config) as h:
        h.resolver.answers["blocked.test"] = ["198.51.100.9"]
        assert status_of(_send(h, get(b"http://example.com/")).received()) == 407
        bad = b"Proxy-Authorization: Basic " + base64.b64encode(b"alice:wrong") + b"\r\n"
        assert status_of(_send(h, get(b"http://example.com/", bad)).received()) == 407
        assert [r.notes["fwproxy.auth_failed"] for r in h.records] == ["missing", "invalid"]
        assert h.attempts == []
        # a rule reached before authentication is only reported, as any other
        c = _send(h, get(b"http://blocked.test/"))
        assert len(h.attempts) == 1
        c.lost()
        assert h.records[-1].notes[WOULD_DENY] == "deny blocked"
        good = b"Proxy-Authorization: Basic " + base64.b64encode(b"alice:pw") + b"\r\n"
        _send(h, get(b"http://example.com/", good))
        assert len(h.attempts) == 2


def test_would_deny_is_counted():
    with Harness(REPORT) as h:
        for _ in range(2):
            _send(h, get(b"http://example.com/")).lost()
        assert h.factory.metrics.would_deny == {"deny all": 2}


# -- the log formats ----------------------------------------------------------------------------


def _record(notes: dict) -> TransactionRecord:  # type: ignore[type-arg]
    return TransactionRecord(
        client="192.0.2.50", method="GET", target="http://example.com/", status=200,
        result="TCP_MISS", started=1700000000.0, notes=notes,
    )  # fmt: skip


def test_would_deny_in_every_log_format():
    noted = _record({WOULD_DENY: 'deny connect !ssl_ports "x"'})
    assert json.loads(as_json(noted))["would_deny"] == 'deny connect !ssl_ports "x"'
    assert squid(noted).endswith(r" would_deny=deny\x20connect\x20!ssl_ports\x20\"x\"")
    assert combined(noted).endswith(r' "would_deny=deny connect !ssl_ports \"x\""')
    plain = _record({})
    assert json.loads(as_json(plain))["would_deny"] is None
    assert "would_deny" not in squid(plain) and "would_deny" not in combined(plain)


# -- the configuration --------------------------------------------------------------------------


def test_mode_is_checked():
    with pytest.raises(ConfigError) as e:
        loads('[access]\nmode = "audit"\nrules = ["deny all"]\n', "f.toml")
    assert e.value.problems == [
        'f.toml:2: access.mode: expected "enforce" or "report", got \'audit\''
    ]


def test_report_mode_is_a_warning_at_start():
    assert loads(REPORT).access.report_only
    assert not loads(ENFORCE).access.report_only
    assert not loads("").access.report_only
    (warning,) = [w for w in loads(REPORT, "f.toml").warnings if "access.mode" in w]
    assert warning.startswith('f.toml: access.mode: "report": requests the rules deny are relayed')
