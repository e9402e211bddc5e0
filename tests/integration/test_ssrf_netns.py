"""The SSRF guard end to end, in a network namespace of its own: the cloud metadata address
169.254.169.254 and its IPv6 disguises (NAT64 ``64:ff9b::a9fe:a9fe``, 6to4, Teredo,
IPv4-compatible) and 10.0.0.1 through NAT64 are put on the namespace's loopback with an origin
behind them; a real ``twistd -n fwproxy`` and real curl (GET and CONNECT) show that each is
reachable through the proxy without a rule (so the denials below are the rules' doing), that
``deny to_linklocal`` denies every disguise of the metadata service, and ``deny to_nonpublic``
all of them. The work is done by ``netns_ssrf.py`` under ``unshare -n``; nothing leaves the
namespace (it has only its loopback)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fwp_support import REPO

HERE = Path(__file__).resolve().parent
LINKLOCAL = ("ipv4", "nat64", "6to4", "teredo", "compatible")


def _unshare() -> list[str]:
    """The command that makes a network namespace here (as root, or in a user namespace)."""
    unshare = shutil.which("unshare")
    if unshare is None or shutil.which("ip") is None:
        pytest.skip("unshare (util-linux) and ip (iproute2) are needed")
    for cmd in ([unshare, "-n"], [unshare, "-rn"]):
        probe = subprocess.run([*cmd, "ip", "link", "set", "lo", "up"], capture_output=True)
        if probe.returncode == 0:
            return cmd
    pytest.skip("cannot make a network namespace here: " + probe.stderr.decode().strip())


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    directory = tmp_path_factory.mktemp("netns")
    proc = subprocess.run(
        [*_unshare(), sys.executable, str(HERE / "netns_ssrf.py"), str(REPO), str(directory)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_without_a_rule_every_address_is_reachable(results):
    control = results["control"]
    for label, got in control["curl"].items():
        assert got == {"get": 200, "connect": 200, "through_tunnel": 200}, label
    assert len(control["origin_saw"]) == 6


def test_deny_to_linklocal_denies_every_disguise_of_the_metadata_service(results):
    guarded = results["to_linklocal"]
    for label in LINKLOCAL:
        assert guarded["curl"][label] == {"get": 403, "connect": 403, "through_tunnel": 0}, label
    # 10.0.0.1 through NAT64 is not link-local: relayed
    assert guarded["curl"]["nat64-private"]["get"] == 200
    assert guarded["origin_saw"] == ["64:ff9b::a00:1"]


def test_deny_to_nonpublic_denies_them_all(results):
    guarded = results["to_nonpublic"]
    for label, got in guarded["curl"].items():
        assert got == {"get": 403, "connect": 403, "through_tunnel": 0}, label
    assert guarded["origin_saw"] == []
