"""A real load balancer in front: Debian's haproxy with ``send-proxy-v2`` before a ``twistd
fwproxy`` listening on ``haproxy:tcp:``, everything on loopback.

What an NLB with PROXY protocol v2 does to fwproxy, done by haproxy: the client address that
``src`` ACLs match and the access log records is the real client's (a client bound to 127.0.0.2,
although every connection fwproxy accepts comes from haproxy on 127.0.0.1); health checks that
connect and close (with a PROXY header, as the NLB's do) log nothing; haproxy's HTTP check of
``/healthz`` passes, read from haproxy's own stats socket (``show stat``).
"""

from __future__ import annotations

import csv
import io
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fwp_support import (
    free_port,
    port_accepts,
    proxy_config,
    source_address_available,
    wait_until,
)

pytestmark = pytest.mark.slow

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
CHECK_INTERVAL_MS = 200

HAPROXY_CFG = """
global
    log stdout format raw local0 info
    stats socket {stats} mode 600 level admin
    maxconn 256

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend proxy
    bind 127.0.0.1:{front}
    default_backend fwproxy

# the NLB's HTTP health check: a PROXY v2 header, then GET /healthz
backend fwproxy
    option httpchk
    http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host fwproxy
    http-check expect status 200
    server fwproxy 127.0.0.1:{back} send-proxy-v2 check inter {inter}ms rise 2 fall 2

# a TCP health check: connect (PROXY v2 header), close
backend fwproxy_tcp_check
    server fwproxy 127.0.0.1:{back} send-proxy-v2 check inter {inter}ms rise 2 fall 2
"""


class HAProxy:
    """``haproxy -db -f CFG`` in front of fwproxy on 127.0.0.1:``back``."""

    def __init__(self, directory: Path, back: int) -> None:
        self.front = free_port()
        self.stats_path = directory / "haproxy.sock"
        self.log_path = directory / "haproxy.log"
        cfg = directory / "haproxy.cfg"
        cfg.write_text(
            HAPROXY_CFG.format(
                stats=self.stats_path, front=self.front, back=back, inter=CHECK_INTERVAL_MS
            )
        )
        check = subprocess.run([HAPROXY, "-c", "-q", "-f", str(cfg)], capture_output=True)
        assert check.returncode == 0, check.stdout + check.stderr
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(cfg)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: port_accepts("127.0.0.1", self.front), 10, "haproxy listening")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.front}"

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.stats_path))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def server_stats(self, backend: str) -> dict[str, str]:
        """The ``show stat`` row of ``backend``'s server ``fwproxy``."""
        text = self.command("show stat").lstrip("# ")
        for row in csv.DictReader(io.StringIO(text)):
            if row["pxname"] == backend and row["svname"] == "fwproxy":
                return row
        raise AssertionError(f"no server fwproxy in backend {backend}:\n{text}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def behind_haproxy(proxy, tmp_path: Path) -> Iterator[tuple[object, HAProxy]]:
    """fwproxy on ``haproxy:tcp:`` serving only 127.0.0.2, and haproxy in front of it."""
    if not shutil.which(HAPROXY):
        pytest.fail(
            "haproxy is not installed (scripts/test installs Debian's: apt-get install haproxy)"
        )
    if not source_address_available("127.0.0.2"):
        pytest.skip("cannot bind a client socket to 127.0.0.2")
    port = free_port()
    access_log = tmp_path / "access.log"
    config = proxy_config(
        [f"haproxy:tcp:{port}:interface=127.0.0.1"],
        clients=["127.0.0.2/32"],
        access_log=access_log,
    )
    p = proxy.start(config, port=port, access_log=access_log)
    haproxy = HAProxy(tmp_path, port)
    try:
        yield p, haproxy
    finally:
        haproxy.stop()


def _up(haproxy: HAProxy, backend: str, check_status: str) -> dict[str, str] | None:
    row = haproxy.server_stats(backend)
    return row if row["status"] == "UP" and row["check_status"] == check_status else None


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_health_checks_pass_and_log_nothing(behind_haproxy) -> None:
    p, haproxy = behind_haproxy
    # haproxy's HTTP check of /healthz, through the PROXY header: "L7OK", the server UP
    row = wait_until(lambda: _up(haproxy, "fwproxy", "L7OK"), 15, "the HTTP check to pass")
    assert row["check_code"] == "200", row
    tcp = wait_until(lambda: _up(haproxy, "fwproxy_tcp_check", "L4OK"), 15, "the TCP check")
    assert tcp["chkfail"] == "0", tcp
    # some more rounds of both checks: still nothing in the access log, nothing in fwproxy's log
    output_before = p.output()
    time.sleep(CHECK_INTERVAL_MS / 1000 * 6)
    assert haproxy.server_stats("fwproxy")["chkfail"] == "0"
    assert _lines(p.access_log) == [], "health checks were logged as transactions"
    assert p.output() == output_before, "health checks were logged"


def test_connect_and_close_through_haproxy_logs_nothing(behind_haproxy) -> None:
    p, haproxy = behind_haproxy
    wait_until(lambda: _up(haproxy, "fwproxy", "L7OK"), 15, "the HTTP check to pass")
    sessions = int(haproxy.server_stats("fwproxy")["stot"])
    output_before = p.output()
    for _ in range(5):  # what an NLB's TCP health check of the balancer does
        with socket.create_connection(("127.0.0.1", haproxy.front), timeout=5):
            time.sleep(0.1)  # haproxy connects to fwproxy and sends the PROXY header
    # every one reached fwproxy (haproxy counts them as sessions of the server) ...
    wait_until(
        lambda: int(haproxy.server_stats("fwproxy")["stot"]) >= sessions + 5,
        10,
        "haproxy to have opened 5 connections to fwproxy",
    )
    time.sleep(0.5)
    # ... and none was logged, nor made fwproxy log anything
    assert _lines(p.access_log) == []
    assert p.output() == output_before
    p.assert_clean_log()


def test_src_acl_and_log_see_the_real_client(behind_haproxy, origin, run_curl) -> None:
    p, haproxy = behind_haproxy
    wait_until(lambda: _up(haproxy, "fwproxy", "L7OK"), 15, "the HTTP check to pass")
    # from 127.0.0.2, the only client the ACL allows: relayed
    r = run_curl("--interface", "127.0.0.2", "-x", haproxy.url, f"{origin.url}/bytes/10")
    assert r.returncode == 0, r.stderr
    assert r.status == 200
    line = p.access_line_for(f"{origin.url}/bytes/10")
    assert line.split()[2] == "127.0.0.2", line
    assert "TCP_MISS/200" in line, line
    # from 127.0.0.1 (haproxy's own address toward fwproxy): denied, and logged as 127.0.0.1
    r = run_curl("--interface", "127.0.0.1", "-x", haproxy.url, f"{origin.url}/bytes/11")
    assert r.status == 403
    line = p.access_line_for(f"{origin.url}/bytes/11")
    assert line.split()[2] == "127.0.0.1", line
    assert "TCP_DENIED/403" in line, line
    assert [rec.request_line.split()[1] for rec in origin.snapshot()] == [b"/bytes/10"]
    # haproxy's own log agrees on who the clients were
    wait_until(lambda: "127.0.0.2:" in haproxy.log(), 5, "haproxy to log the 127.0.0.2 client")
    p.assert_clean_log()
