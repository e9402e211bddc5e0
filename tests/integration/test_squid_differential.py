"""Differential tests of ``fwproxy convert-squid`` against Debian's real squid: for each config
of tests/squid_corpus, squid on the config and fwproxy on its conversion must give every
request of a matrix (client address x proxy port x destination x port x GET path or CONNECT x
credentials) the same access decision, denied (403/407) or not. The work is done by
``netns_squid_diff.py`` in network and mount namespaces of its own (``unshare -n -m``, as root:
a private ``/etc/hosts``, destinations in 198.18.0.0/15 on the namespace's loopback); nothing
leaves it. A hand translation of one config runs too, and a deliberately wrong one that must
disagree: the comparison is shown able to fail."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fwp_support import REPO

from fwproxy.squidconf import convert

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent / "squid_corpus"
SQUID = "/usr/sbin/squid"
CONFIGS = sorted(p.name for p in CORPUS.glob("*.conf"))


def _namespace_command() -> list[str]:
    if not os.access(SQUID, os.X_OK):
        pytest.skip(f"needs Debian's squid ({SQUID})")
    unshare = shutil.which("unshare")
    if unshare is None or shutil.which("ip") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare (util-linux), mount and ip (iproute2)")
    if os.geteuid() != 0:
        pytest.skip("needs root: squid runs as its own user, /etc/hosts is bind-mounted")
    probe = subprocess.run(
        [unshare, "-n", "-m", "ip", "link", "set", "lo", "up"], capture_output=True
    )
    if probe.returncode != 0:
        pytest.skip("cannot make network and mount namespaces: " + probe.stderr.decode().strip())
    return [unshare, "-n", "-m"]


@pytest.fixture(scope="module")
def results() -> Iterator[dict[str, Any]]:
    command = _namespace_command()
    # not under pytest's own temporary directory: squid's user must reach its files
    work = Path(tempfile.mkdtemp(prefix="fwproxy-squid-diff-"))
    work.chmod(0o755)
    try:
        proc = subprocess.run(
            [*command, sys.executable, str(HERE / "netns_squid_diff.py"), str(REPO), str(work),
             str(CORPUS)],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.stderr.write(proc.stderr)  # the disagreement tables, shown with a failure
    assert proc.returncode == 0, proc.stderr[-5000:]
    yield json.loads(proc.stdout)


def _table(rows: list[dict[str, Any]]) -> str:
    shown = [f"squid {r['squid']:3}  fwproxy {r['fwproxy']:3}  {r['request']}" for r in rows[:60]]
    more = f"\n... and {len(rows) - 60} more" if len(rows) > 60 else ""
    return "\n".join(shown) + more


#: the requests of a client that is not the balancer sending a PROXY-protocol header of its own
SPOOFED = "10.2.0.7 -> :3130 (PROXY: "


def _spoofed(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(spoofed, others)``: see :func:`test_proxy_protocol_senders_restricted_as_in_squid`."""
    spoofed = [r for r in rows if r["request"].startswith(SPOOFED)]
    return spoofed, [r for r in rows if not r["request"].startswith(SPOOFED)]


@pytest.mark.parametrize("config", CONFIGS)
def test_fwproxy_decides_as_squid(results: dict[str, Any], config: str) -> None:
    entry = results[config]
    assert not entry["squid_error"], entry["squid_error"]
    assert entry["convert"].get("converter") != "missing", "fwproxy.squidconf is not there"
    assert entry["convert"]["exit_code"] == 0, entry["convert"]
    run = entry["runs"]["converted"]
    assert not run["fwproxy_error"], run["fwproxy_error"]
    # the only requests without an answer: those squid and fwproxy refuse a PROXY header
    spoofed, others = _spoofed(run["unanswered"])
    assert others == [], f"{config}: unanswered:\n" + _table(others)
    assert run["disagreements"] == [], f"{config}:\n" + _table(run["disagreements"])


def test_proxy_protocol_senders_restricted_as_in_squid(results: dict[str, Any]) -> None:
    """``proxy_protocol_access allow balancer``: squid closes the connection of another client
    that sends a PROXY-protocol header, and so does fwproxy (``proxy_protocol_from``, converted
    from it), instead of taking the address the header names."""
    converted = tomllib.loads(convert(str(CORPUS / "proxyproto.conf")).toml)
    assert converted["proxy"]["proxy_protocol_from"] == ["127.0.0.1/32"]
    run = results["proxyproto.conf"]["runs"]["converted"]
    spoofed_wrong, _ = _spoofed(run["disagreements"])
    assert spoofed_wrong == [], _table(spoofed_wrong)
    spoofed, _ = _spoofed(run["unanswered"])
    assert spoofed and all(r["squid"] == 0 and r["fwproxy"] == 0 for r in spoofed), _table(spoofed)


def test_the_matrix_holds_both_decisions(results: dict[str, Any]) -> None:
    """Every config's matrix has requests squid denies and requests it lets through, but the
    story's: it is an open proxy (``allow Safe_ports`` with every port), nothing is denied."""
    for config, entry in results.items():
        denied = entry["runs"]["converted"]["denied_by_squid"]
        if config == "seed.conf":
            assert denied == 0
        else:
            assert 0 < denied < entry["requests"], config


def test_the_known_differences(results: dict[str, Any]) -> None:
    """Where squid and fwproxy rightly differ (``known_difference`` in the runner), and only
    there: squid matches dstdomain against an IP literal's reverse-DNS name, fwproxy does not
    (in domains.conf that decides CONNECTs to 198.18.0.10, www.example.com in the hosts
    file); squid's ``deny dst`` denies a name when any of its addresses is in it, fwproxy
    relays to the others (addresses.conf: dual.test, one address blocked, from the office);
    behind a PROXY-protocol port squid's localport is the header's port, fwproxy's the
    listener's (proxyproto.conf: the lab through the balancer's port 8443)."""
    rdns = results["domains.conf"]["runs"]["converted"]["known"]
    assert rdns and all(" CONNECT 198.18.0.10:" in r["request"] for r in rdns)
    assert all(r["squid"] == 200 and r["fwproxy"] == 403 for r in rdns)
    dual = results["addresses.conf"]["runs"]["converted"]["known"]
    assert dual and all(r["request"].split()[0] in ("10.1.0.5", "10.2.0.7") for r in dual)
    assert all("dual.test" in r["request"] for r in dual)
    assert all(r["squid"] == 403 and r["fwproxy"] == 200 for r in dual)
    balanced = results["proxyproto.conf"]["runs"]["converted"]["known"]
    assert balanced and all("(PROXY: 192.168.3.4 to :8443)" in r["request"] for r in balanced)
    assert all(r["squid"] == 403 and r["fwproxy"] != 403 for r in balanced)
    others = [
        (config, label)
        for config, entry in results.items()
        for label, run in entry["runs"].items()
        if run.get("known") and config not in ("domains.conf", "addresses.conf", "proxyproto.conf")
    ]
    assert others == []


def test_a_hand_translation_agrees_and_a_wrong_one_does_not(results: dict[str, Any]) -> None:
    runs = results["addresses.conf"]["runs"]
    assert runs["handwritten"]["disagreements"] == []
    wrong = runs["handwritten.mutant"]["disagreements"]
    # the mutant lets the partner (203.0.113.7) go anywhere; squid only "inside"
    assert wrong and {r["request"].split()[0] for r in wrong} == {"203.0.113.7"}
    assert all(r["squid"] == 403 and r["fwproxy"] != 403 for r in wrong)
