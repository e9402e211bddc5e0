"""Many slow readers through a proxy (slowhttptest's slow-read attack); report the proxy's RSS growth.

Runs ``slowhttptest -X`` (Debian's slowhttptest) with N connections through the proxy, each
asking for URL (a large file) and reading it through a tiny TCP window, samples the proxy's RSS
(``VmRSS`` of every PID, summed) twice a second, and prints:

  slow_readers_connections N                       asked for
  slow_readers_connected K                         the most slowhttptest reported connected at once
  slow_readers_rss_before_kib KiB
  slow_readers_rss_growth_kib KiB                  peak minus before
  slow_readers_rss_growth_per_connection_kib KiB   growth / K
  slow_readers_service_available YES|NO            slowhttptest's last probe through the proxy

A proxy that reads the origin only as fast as each client reads grows by what it buffers per
connection; measure a FRESH process (an allocator keeps what an earlier peak used, so a second
run on the same process reads lower). With ``--start CMD`` the script starts the proxy itself
(``sh -c CMD``, in its own session), waits until HOST:PORT accepts, measures, and stops it
(SIGTERM, then SIGKILL); PID is then not given.

usage: python3 slow_readers.py HOST:PORT (PID[,PID...] | --start CMD) URL N [options]
  --seconds S      slowhttptest's test length (default 40)
  --rate R         new connections per second (default 200)
  --window A-B     advertised window range in bytes (default 1-512, slowhttptest's)
  --read BYTES/S   bytes per read() and seconds between reads (default 5/1, slowhttptest's)

The file descriptor limit is raised to the hard limit (each connection is one descriptor here and
two in the proxy: raise the proxy's too). Every address should be loopback; nothing else is
contacted. Example (an nginx origin on 127.0.0.1:18080 serving a 1 GiB file, as benchmarks/run
sets up; the issue's scenario is 1,000 connections and a 50 MB file):

  python3 benchmarks/slow_readers.py 127.0.0.1:13128 --start \
    'ulimit -n 20000; exec twistd -n --pidfile= fwproxy --config /tmp/bench.toml' \
    http://127.0.0.1:18080/1g 1000
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def status(text: str) -> tuple[int, str]:
    """The most connections slowhttptest reported connected, and its last availability."""
    text = ANSI.sub("", text)
    connected = [int(n) for n in re.findall(r"connected:\s+(\d+)", text)]
    available = re.findall(r"service available:\s+(\w+)", text)
    return max(connected, default=0), (available[-1] if available else "?")


def measure(args: argparse.Namespace, host: str, port: int, pids: list[int]) -> int:
    lo, _, hi = args.window.partition("-")
    size, _, every = args.read.partition("/")
    cmd = [
        "slowhttptest", "-X", "-c", str(args.connections), "-r", str(args.rate),
        "-l", str(args.seconds), "-w", lo, "-y", hi or lo, "-z", size, "-n", every or "1",
        "-d", f"{host}:{port}", "-u", args.url, "-p", "5",
    ]  # fmt: skip
    before = peak = rss_kib(pids)
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + args.seconds + 60
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
            peak = max(peak, rss_kib(pids))
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.seek(0)
        out = log.read()
    connected, available = status(out)
    growth = peak - before
    print(f"slow_readers_connections {args.connections}")
    print(f"slow_readers_connected {connected}")
    print(f"slow_readers_rss_before_kib {before} KiB")
    print(f"slow_readers_rss_growth_kib {growth} KiB")
    if connected:
        print(f"slow_readers_rss_growth_per_connection_kib {growth / connected:.1f} KiB")
    print(f"slow_readers_service_available {available}")
    if connected < args.connections:
        print(f"slow_readers_note only {connected} of {args.connections} connections at once")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("proxy", help="HOST:PORT of the proxy")
    p.add_argument("pids", nargs="?", default="", help="PID[,PID...] of the proxy")
    p.add_argument("url")
    p.add_argument("connections", type=int)
    p.add_argument("--start", help="shell command that starts the proxy in the foreground")
    p.add_argument("--seconds", type=int, default=40)
    p.add_argument("--rate", type=int, default=200)
    p.add_argument("--window", default="1-512")
    p.add_argument("--read", default="5/1")
    args = p.parse_args()
    if shutil.which("slowhttptest") is None:
        print("slow_readers_error slowhttptest is not installed (apt-get install slowhttptest)")
        return 1
    host, _, port_text = args.proxy.rpartition(":")
    host, port = host.strip("[]"), int(port_text)
    limit = raise_nofile()
    if limit < args.connections + 100:
        print(f"slow_readers_note the descriptor limit is {limit}: too low for the connections")
    if not args.start:
        pids = [int(x) for x in args.pids.split(",") if x]
        return measure(args, host, port, pids)
    if accepts(host, port):
        print(f"slow_readers_error {host}:{port} is already taken: stop what listens there")
        return 1
    proxy = subprocess.Popen(["sh", "-c", args.start], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not accepts(host, port):
            if proxy.poll() is not None or time.monotonic() > deadline:
                print(f"slow_readers_error the proxy did not start (exit {proxy.poll()})")
                return 1
            time.sleep(0.1)
        time.sleep(1)
        return measure(args, host, port, descendants(proxy.pid))
    finally:
        if proxy.poll() is None:
            os.killpg(proxy.pid, signal.SIGTERM)
            try:
                proxy.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proxy.pid, signal.SIGKILL)
                proxy.wait(5)


if __name__ == "__main__":
    sys.exit(main())
