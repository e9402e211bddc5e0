"""Debian's squid as a real parent of a real ``twistd -n fwproxy``, on loopback: relayed GETs
go to squid in absolute form with fwproxy's own Basic credentials (squid checks them with
``basic_ncsa_auth``), CONNECTs become CONNECTs to squid, then the splice (TLS end to end to a
local TLS origin, and raw bytes to an echo server); a dead first parent fails over to squid.

squid runs in the foreground (``squid -N``) from its own temporary directory, on a free port,
as the ``proxy`` user (squid's own privilege drop when started as root).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fwp_origin import pattern
from fwp_support import free_port, port_accepts, toml_str, wait_until
from support.certs import CA, TLSOriginServer
from support.servers import running

SQUID = shutil.which("squid") or "/usr/sbin/squid"
USER, PASSWORD = "fwproxy", "parent-Pa55word"

pytestmark = pytest.mark.skipif(not os.access(SQUID, os.X_OK), reason="needs squid")


@dataclass
class Squid:
    port: int
    directory: Path
    proc: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def access_lines(self, needle: str, timeout: float = 10) -> list[str]:
        """squid's access log lines holding ``needle`` (it writes them as they end)."""
        path = self.directory / "access.log"

        def found() -> list[str]:
            text = path.read_text(errors="replace") if path.exists() else ""
            return [line for line in text.splitlines() if needle in line]

        return wait_until(found, timeout, f"{needle!r} in squid's access log")


def _htpasswd(directory: Path) -> Path:
    hashed = subprocess.run(
        ["openssl", "passwd", "-apr1", PASSWORD], check=True, capture_output=True, text=True
    ).stdout.strip()
    path = directory / "passwd"
    path.write_text(f"{USER}:{hashed}\n")
    path.chmod(0o644)
    return path


@pytest.fixture(scope="module")
def squid() -> Iterator[Squid]:
    directory = Path(tempfile.mkdtemp(prefix="fwproxy-squid-"))
    directory.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(directory, "proxy")
    port = free_port()
    conf = directory / "squid.conf"
    conf.write_text(
        f"""http_port 127.0.0.1:{port}
auth_param basic program /usr/lib/squid/basic_ncsa_auth {_htpasswd(directory)}
auth_param basic realm parent
acl clients src 127.0.0.1/32
acl authed proxy_auth REQUIRED
http_access deny !clients
http_access allow authed
http_access deny all
cache deny all
cache_mem 0 MB
pid_filename {directory}/squid.pid
access_log stdio:{directory}/access.log
cache_log {directory}/cache.log
coredump_dir {directory}
shutdown_lifetime 0 seconds
pinger_enable off
"""
    )
    out = open(directory / "out.txt", "wb")  # noqa: SIM115 - open for squid's whole life
    proc = subprocess.Popen([SQUID, "-N", "-f", str(conf)], stdout=out, stderr=out, cwd=directory)
    try:
        wait_until(lambda: port_accepts("127.0.0.1", port) or proc.poll() is not None, 15, "squid")
        if proc.poll() is not None:
            log = (directory / "cache.log").read_text(errors="replace")[-3000:]
            pytest.fail(f"squid exited with {proc.returncode}:\n{log}")
        yield Squid(port, directory, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        out.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def credentials(tmp_path: Path) -> Path:
    path = tmp_path / "squid.cred"
    path.write_text(f"{USER}:{PASSWORD}\n")
    return path


def parents(squid: Squid, credentials: Path, first: str = "squid", extra: str = "") -> str:
    return f"""
[parents.squid]
address = "{squid.address}"
credentials_file = {toml_str(str(credentials))}

[routing]
rules = ["parent {first} all"]
{extra}"""


def test_get_through_squid(proxy, origin, squid: Squid, credentials: Path, run_curl) -> None:
    p = proxy.start_with(extra=parents(squid, credentials))
    r = run_curl("-x", p.url, f"{origin.url}/bytes/70001")
    assert r.status == 200, r.stderr
    assert r.body == pattern(70001)
    rec = origin.last()
    assert rec.target == b"/bytes/70001"
    assert any(b"squid" in v for v in rec.headers("Via"))  # squid made the last hop
    [line] = squid.access_lines("/bytes/70001")
    assert " TCP_MISS/200 " in line and f" {USER} " in line  # fwproxy's credentials
    mine = p.access_line_for("/bytes/70001")
    assert " TCP_MISS/200 " in mine and " FIRSTUP_PARENT/127.0.0.1 " in mine
    assert PASSWORD not in p.output() and PASSWORD not in mine
    p.assert_clean_log()


def test_connect_through_squid_to_a_tls_origin(
    proxy, squid: Squid, credentials: Path, run_curl, tmp_path: Path
) -> None:
    ca = CA("squid test CA")
    with running(TLSOriginServer(ca.issue("localhost"), tmp_path)) as tls_origin:
        p = proxy.start_with(extra=parents(squid, credentials), tunnel_ports=(443, tls_origin.port))
        url = f"https://localhost:{tls_origin.port}/bytes/3000"
        r = run_curl("-p", "-x", p.url, "--cacert", str(ca.write(tmp_path)), url)
        assert r.status == 200 and r.connect_status == 200, r.stderr
        assert r.body == pattern(3000)
    [line] = squid.access_lines(f"CONNECT localhost:{tls_origin.port}")
    assert " TCP_TUNNEL/200 " in line and f" {USER} " in line
    mine = p.access_line_for(f"localhost:{tls_origin.port}")
    assert " TCP_TUNNEL/200 " in mine and " FIRSTUP_PARENT/127.0.0.1 " in mine


def test_connect_through_squid_raw_bytes(proxy, echo, squid: Squid, credentials: Path) -> None:
    p = proxy.start_with(extra=parents(squid, credentials), tunnel_ports=(echo.port,))
    with socket.create_connection(p.address, timeout=10) as s:
        s.sendall(f"CONNECT {echo.authority} HTTP/1.1\r\nHost: {echo.authority}\r\n\r\n".encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            chunk = s.recv(1)
            assert chunk, head
            head += chunk
        assert head == b"HTTP/1.1 200 Connection established\r\n\r\n"
        s.sendall(b"ping through two proxies")
        got = b""
        while len(got) < 24:
            got += s.recv(100)
        assert got == b"ping through two proxies"


def test_wrong_credentials_for_connect_name_the_parent(
    proxy, echo, squid: Squid, tmp_path: Path, run_curl
) -> None:
    wrong = tmp_path / "wrong.cred"
    wrong.write_text(f"{USER}:not-the-password\n")
    p = proxy.start_with(extra=parents(squid, wrong), tunnel_ports=(echo.port,))
    r = run_curl("-p", "-x", p.url, f"http://{echo.authority}/")
    assert r.connect_status == 502
    assert "not-the-password" not in p.output()
    line = p.access_line_for(echo.authority)
    assert " TCP_TUNNEL/502 " in line and " FIRSTUP_PARENT/127.0.0.1 " in line
    with socket.create_connection(p.address, timeout=10) as s:
        s.sendall(f"CONNECT {echo.authority} HTTP/1.1\r\n\r\n".encode())
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 502 ")
    assert b"answered the CONNECT with 407 Proxy Authentication Required" in answer


def test_a_dead_parent_fails_over_to_squid(
    proxy, origin, squid: Squid, credentials: Path, run_curl
) -> None:
    dead = f'\n[parents.dead]\naddress = "127.0.0.1:{free_port()}"\n'
    p = proxy.start_with(extra=parents(squid, credentials, "dead,squid", dead))
    r = run_curl("-x", p.url, f"{origin.url}/bytes/10007")
    assert r.status == 200, r.stderr
    assert squid.access_lines("/bytes/10007")
    p.wait_output(r"parent dead \(127\.0\.0\.1:\d+\) failed .*connection refused")
    p.assert_clean_log()
