"""``twistd fwproxy --workers 2`` and ``fwproxy run --workers 2``: two processes on one port, one
access log, signals passed on."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
COMMANDS = {
    "twistd": [*TWISTD, "-n", "--pidfile=", "fwproxy"],
    "fwproxy-run": [sys.executable, "-m", "fwproxy.cli", "run"],
}


class _Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def plain_origin() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                out.append(int(entry))
    return out


def _get(port: int, origin: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            f"GET http://127.0.0.1:{origin}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def _wait(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_two_workers_share_a_port_a_log_and_signals(
    plain_origin: int, tmp_path: Path, command: str
) -> None:
    origin = plain_origin
    port = _free_port()
    log = tmp_path / "access.log"
    conf = tmp_path / "fw.toml"
    conf.write_text(
        f'[proxy]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n'
        '[acl.local]\nsrc = ["127.0.0.1/32"]\n[access]\nrules = ["allow local", "deny all"]\n'
        f'[log]\naccess = "{log}"\n'
    )
    out = tmp_path / "out.txt"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(out, "wb") as sink:
        proc = subprocess.Popen(
            [*COMMANDS[command], "--config", str(conf), "--workers", "2"],
            stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
        )  # fmt: skip
    try:
        workers = _wait(lambda: _children(proc.pid), 15, "a worker process")
        assert len(workers) == 1  # the twistd process is worker 0
        _wait(lambda: b"200 OK" in _get(port, origin), 15, "the port to serve")
        answers = [_get(port, origin) for _ in range(40)]
        assert all(a.startswith(b"HTTP/1.1 200") for a in answers)
        # both processes write whole lines to the one log file
        lines = _wait(
            lambda: (ls := log.read_text().splitlines()) and len(ls) >= 41 and ls, 10, "log lines"
        )
        assert all(" TCP_MISS/200 " in line for line in lines)
        # the kernel spreads connections: the worker took some of them (its CPU time grew)
        with open(f"/proc/{workers[0]}/stat") as f:
            ticks = sum(int(x) for x in f.read().rpartition(")")[2].split()[11:13])
        assert ticks > 0

        proc.send_signal(signal.SIGHUP)
        _wait(lambda: out.read_text().count("configuration reloaded") >= 2, 10, "both to reload")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        _wait(lambda: not any(os.path.exists(f"/proc/{w}") for w in workers), 10, "worker exit")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for w in _children(proc.pid):
            os.kill(w, signal.SIGKILL)
    assert "Traceback" not in out.read_text()
