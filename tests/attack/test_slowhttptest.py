"""slowhttptest (Debian's) against a real ``twistd -n fwproxy`` on loopback, with the recording
origin behind it: slow headers (``-H``, slowloris), slow body (``-B``, R-U-Dead-Yet) and slow
read (``-X``); plus slow readers through CONNECT tunnels, which slowhttptest cannot open.

Slow headers and slow body: the proxy closes every attacking connection at its configured timeout
(``request_header``, ``read``), not before, and serves a normal client meanwhile; what the
attack saw is slowhttptest's own per-second record (``-g``: closed, pending, connected).
Slow read: each connection asks for 50 MB and reads it through a window of at most 512 bytes;
the proxy's RSS (``VmRSS``) may grow by at most :data:`PER_READER_KIB` per connection. With
fixed 256 KiB reads and write buffers fwproxy grew by about 350 KiB per reader.

Marked ``slow``; skipped where slowhttptest is not installed (``.ci/run`` installs it). Each
test is bounded, well under a minute. Figures go to /tmp/fwproxy-figures.txt.
"""

from __future__ import annotations

import csv
import re
import resource
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .support import (
    OriginServer,
    ProxyLauncher,
    ProxyProcess,
    fetch,
    pattern,
    raise_nofile,
    record_figure,
    wait_until,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("slowhttptest") is None, reason="slowhttptest not installed"),
]

#: attacking connections per test
CONNECTIONS = 200
#: what the proxy's RSS may grow by per slow reader (it was about 350 KiB with 256 KiB buffers)
PER_READER_KIB = 64
#: the file each slow reader asks for
BIG = 50_000_000

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _raise_child_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Attack:
    """One slowhttptest run in the background, with its per-second record in ``out``."""

    def __init__(self, mode: list[str], proxy: ProxyProcess, url: str, out: Path, seconds: int):
        self.prefix = out / "slowhttptest"
        cmd = [
            "slowhttptest", *mode, "-c", str(CONNECTIONS), "-r", str(CONNECTIONS),
            "-l", str(seconds), "-d", f"{proxy.host}:{proxy.port}", "-u", url,
            "-p", "5", "-g", "-o", str(self.prefix),
        ]  # fmt: skip
        self.log = out / "slowhttptest.out"
        self.started = time.monotonic()
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        self.seconds = seconds

    def wait(self) -> list[dict[str, int]]:
        """Wait for the end (bounded); slowhttptest's record, one row per second (the last row
        may be stale: slowhttptest stops when no connection is left without a last one)."""
        try:
            self.proc.wait(self.seconds + 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError("slowhttptest overran its test length") from None
        path = self.prefix.with_suffix(".csv")
        assert path.exists(), f"slowhttptest wrote no record:\n{self.log.read_text()}"
        with path.open() as f:
            rows = [
                {k.strip(): int(v) for k, v in row.items() if v and v.strip().isdigit()}
                for row in csv.DictReader(f)
            ]
        assert rows, f"slowhttptest's record is empty:\n{self.log.read_text()}"
        return rows

    def ended(self) -> tuple[int, str]:
        """When slowhttptest ended (its second) and why, from its report."""
        text = ANSI.sub("", self.log.read_text(errors="replace"))
        second = re.findall(r"Test ended on (\d+)\w* second", text)
        why = re.findall(r"Exit status:\s*(.+)", text)
        return (int(second[-1]) if second else -1), (why[-1].strip() if why else "?")


def _normal_client(p: ProxyProcess, o: OriginServer) -> float:
    """A normal client's request through the proxy: its latency (it must be served)."""
    t = time.monotonic()
    r = fetch(p.address, f"{o.url}/bytes/1000", timeout=10)
    assert r.status == 200 and r.body == pattern(1000), r
    return time.monotonic() - t


def _closed_by_timeout(attack: Attack, timeout: float, what: str, normal_latency: float) -> None:
    """Every connection was up (not refused), none closed before ``timeout``, all closed
    within a few seconds after it (slowhttptest then stops: no connection left)."""
    rows = attack.wait()
    second, why = attack.ended()
    peak = max(r["Connected"] for r in rows)
    early = [r for r in rows if r["Seconds"] < timeout - 1 and r["Closed"] > 0]
    late = [r for r in rows if r["Seconds"] >= timeout + 4 and r["Connected"] > 0]
    record_figure(f"slowhttptest.{what}.connected_peak", peak)
    record_figure(f"slowhttptest.{what}.record", [(r["Seconds"], r["Closed"]) for r in rows])
    record_figure(f"slowhttptest.{what}.ended", f"second {second}: {why}")
    record_figure(f"slowhttptest.{what}.normal_client_latency_s", f"{normal_latency:.3f}")
    assert peak >= CONNECTIONS * 0.9, f"only {peak} attacking connections were up at once"
    assert not early, f"connections closed before the {timeout} s timeout: {early}"
    assert not late, f"connections still up {timeout} s + 4 s after opening: {late}"
    assert why == "No open connections left", f"slowhttptest ended: {why}"
    assert 0 <= second <= timeout + 4, f"the last connection closed at second {second}"


def _attack_with_a_normal_client(attack: Attack, p: ProxyProcess, o: OriginServer) -> float:
    wait_until(lambda: p.fd_count() >= CONNECTIONS * 0.9, 10, "the attacking connections")
    latency = _normal_client(p, o)
    assert attack.proc.poll() is None, "slowhttptest ended before the normal client was served"
    return latency


def test_slow_headers_are_cut_at_the_request_header_timeout(
    proxies: ProxyLauncher, origin: OriginServer, tmp_path: Path
) -> None:
    raise_nofile(4 * CONNECTIONS)
    timeout = 4
    p = proxies.start(timeouts={"request_header": timeout}, preexec_fn=_raise_child_limit)
    # a header line every 10 s, never the end of the head
    attack = Attack(["-H", "-i", "10", "-x", "24"], p, f"{origin.url}/", tmp_path, 20)
    latency = _attack_with_a_normal_client(attack, p, origin)
    _closed_by_timeout(attack, timeout, "slow_headers", latency)
    assert p.alive()
    p.assert_clean_log()


def test_slow_bodies_are_cut_at_the_read_timeout(
    proxies: ProxyLauncher, origin: OriginServer, tmp_path: Path
) -> None:
    raise_nofile(4 * CONNECTIONS)
    timeout = 4
    p = proxies.start(timeouts={"read": timeout}, preexec_fn=_raise_child_limit)
    # a head with Content-Length: 8192, then a few body bytes every 10 s
    mode = ["-B", "-i", "10", "-s", "8192", "-x", "10"]
    attack = Attack(mode, p, f"{origin.url}/upload", tmp_path, 20)
    latency = _attack_with_a_normal_client(attack, p, origin)
    _closed_by_timeout(attack, timeout, "slow_body", latency)
    assert p.alive()
    p.assert_clean_log()


def _warm(p: ProxyProcess, o: OriginServer) -> None:
    """Code paths, the first large paced body and tunnel, the allocator: before RSS is read."""
    for _ in range(10):
        _normal_client(p, o)
    r = fetch(p.address, f"{o.url}/stream/3000000", timeout=20)
    assert r.status == 200 and len(r.body) == 3_000_000
    with socket.create_connection(p.address, timeout=10) as s:
        s.sendall(f"CONNECT {o.authority} HTTP/1.1\r\nHost: {o.authority}\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
    time.sleep(0.5)


class _Peak:
    """Samples the proxy's RSS every 0.2 s in a thread; ``kib`` is the highest seen."""

    def __init__(self, p: ProxyProcess) -> None:
        self.kib = p.rss_kib()
        self._p = p
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.kib = max(self.kib, self._p.rss_kib())
            except (OSError, AssertionError):
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.kib


def _assert_bounded(what: str, before: int, peak: int, readers: int) -> None:
    per = (peak - before) / max(readers, 1)
    record_figure(f"slowhttptest.{what}.readers", readers)
    record_figure(f"slowhttptest.{what}.rss_before_kib", before)
    record_figure(f"slowhttptest.{what}.rss_growth_kib", peak - before)
    record_figure(f"slowhttptest.{what}.rss_growth_per_reader_kib", f"{per:.1f}")
    assert readers >= CONNECTIONS * 0.9, f"only {readers} slow readers were being served"
    assert per <= PER_READER_KIB, (
        f"the proxy grew by {peak - before} KiB for {readers} slow readers: {per:.0f} KiB each "
        f"(at most {PER_READER_KIB})"
    )


def test_slow_readers_leave_little_in_the_proxy(
    proxies: ProxyLauncher, origin: OriginServer, tmp_path: Path
) -> None:
    raise_nofile(4 * CONNECTIONS)
    p = proxies.start(
        timeouts={"read": 120}, tunnel_ports=(origin.port,), preexec_fn=_raise_child_limit
    )
    _warm(p, origin)
    fds = p.fd_count()
    before = p.rss_kib()
    peak = _Peak(p)
    # windows of 1-512 bytes, 5 bytes read a second: the kernel's buffers fill, then the proxy's
    mode = ["-X", "-w", "1", "-y", "512", "-n", "1", "-z", "5"]
    attack = Attack(mode, p, f"{origin.url}/stream/{BIG}", tmp_path, 15)
    # each is relayed (a client and an upstream connection) and stays so
    wait_until(lambda: p.fd_count() >= fds + 2 * CONNECTIONS * 0.9, 10, "the slow readers")
    time.sleep(5)  # every reader's buffers fill
    relayed = (p.fd_count() - fds) // 2
    latency = _normal_client(p, origin)
    record_figure("slowhttptest.slow_read.normal_client_latency_s", f"{latency:.3f}")
    rows = attack.wait()
    high = peak.stop()
    record_figure("slowhttptest.slow_read.connected_peak", max(r["Connected"] for r in rows))
    _assert_bounded("slow_read", before, high, relayed)
    assert p.alive()
    p.assert_clean_log()


def test_slow_readers_through_tunnels_leave_little_in_the_proxy(
    proxies: ProxyLauncher, origin: OriginServer
) -> None:
    raise_nofile(4 * CONNECTIONS)
    p = proxies.start(tunnel_ports=(origin.port,), preexec_fn=_raise_child_limit)
    _warm(p, origin)
    fds = p.fd_count()
    before = p.rss_kib()
    peak = _Peak(p)
    socks = []
    try:
        for _ in range(CONNECTIONS):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # a tiny window
            s.settimeout(10)
            s.connect(p.address)
            a = origin.authority
            s.sendall(f"CONNECT {a} HTTP/1.1\r\nHost: {a}\r\n\r\n".encode())
            assert s.recv(len(b"HTTP/1.1 200 Connection established\r\n\r\n")).startswith(
                b"HTTP/1.1 200"
            )
            s.sendall(f"GET /stream/{BIG} HTTP/1.1\r\nHost: {a}\r\n\r\n".encode())
            socks.append(s)
        wait_until(lambda: p.fd_count() >= fds + 2 * CONNECTIONS, 10, "the tunnels")
        time.sleep(5)  # every tunnel's buffers fill; nothing is read
        latency = _normal_client(p, origin)
        record_figure("slowhttptest.slow_tunnel.normal_client_latency_s", f"{latency:.3f}")
        high = peak.stop()
        _assert_bounded("slow_tunnel", before, high, (p.fd_count() - fds) // 2)
    finally:
        peak.stop()
        for s in socks:
            s.close()
    assert p.alive()
    p.assert_clean_log()
