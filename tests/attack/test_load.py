"""Load: 10,000 idle client connections held at once, and a slowloris of 1,000 clients.

Marked ``slow``. Each test is bounded (well under 60 s). The figures (RSS per idle connection,
slowloris outcome) are printed (``-s``) and appended to /tmp/fwproxy-figures.txt.
"""

from __future__ import annotations

import errno
import resource
import selectors
import socket
import time

import pytest

from .support import (
    Conn,
    OriginServer,
    ProxyLauncher,
    fetch,
    pattern,
    raise_nofile,
    readable_now,
    record_figure,
    wait_until,
)

pytestmark = pytest.mark.slow

IDLE = 10_000


def _hard_limit() -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 30 if hard == resource.RLIM_INFINITY else hard


def _raise_child_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _connect_many(address: tuple[str, int], n: int, deadline: float) -> list[socket.socket]:
    socks: list[socket.socket] = []
    while len(socks) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(socks)} of {n} connections after the time allowed")
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect(address)
        except OSError as e:
            s.close()
            if e.errno in (errno.EADDRNOTAVAIL, errno.EMFILE):
                raise
            time.sleep(0.01)
            continue
        socks.append(s)
    return socks


def test_ten_thousand_idle_connections_are_held_and_served(
    proxies: ProxyLauncher, origin: OriginServer
) -> None:
    need = IDLE + 2000
    if _hard_limit() < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit {_hard_limit()} < {need}")
    if raise_nofile(need) < need:
        pytest.skip("cannot raise this process's RLIMIT_NOFILE")
    p = proxies.start(
        limits={"max_connections": IDLE + 1000},
        timeouts={"request_header": 120, "client_idle": 120},
        backlog=4096,
        preexec_fn=_raise_child_limit,
    )
    o = origin
    for _ in range(20):  # warm up: code paths, pools, the access log
        assert fetch(p.address, f"{o.url}/bytes/10").status == 200
    time.sleep(0.5)
    fds0 = p.fd_count()
    rss0 = p.rss_kib()
    t0 = time.monotonic()
    socks = _connect_many(p.address, IDLE, t0 + 40)
    try:
        wait_until(lambda: p.fd_count() >= fds0 + IDLE, 20, f"the proxy to accept {IDLE}")
        opened = time.monotonic() - t0
        time.sleep(1.0)
        rss1 = p.rss_kib()
        per_conn = (rss1 - rss0) / IDLE
        record_figure("load.idle_connections", IDLE)
        record_figure("load.idle_open_seconds", f"{opened:.1f}")
        record_figure("load.rss_before_kib", rss0)
        record_figure("load.rss_with_idle_kib", rss1)
        record_figure("load.rss_per_idle_connection_kib", f"{per_conn:.2f}")
        closed = readable_now(socks)
        assert closed == [], f"{len(closed)} idle connections were closed or written to"
        # a sample of 500 is served, on the connections held all along
        sample = socks[:: IDLE // 500][:500]
        conns = [Conn.wrap(s) for s in sample]
        t1 = time.monotonic()
        for c in conns:
            c.send(f"GET {o.url}/bytes/10 HTTP/1.1\r\nHost: {o.authority}\r\n\r\n".encode())
        for c in conns:
            r = c.response("GET", timeout=20)
            assert r.status == 200 and r.body == pattern(10), r
        served = time.monotonic() - t1
        record_figure("load.sample_served", f"{len(conns)} in {served:.1f} s")
        rest = [s for s in socks if s not in set(sample)]
        closed = readable_now(rest)
        assert closed == [], f"{len(closed)} idle connections were closed meanwhile"
        assert p.alive()
    finally:
        for s in socks:
            s.close()
    p.assert_clean_log()


SLOW = 1_000
HEADER_TIMEOUT = 6


def test_slowloris_does_not_starve_a_normal_client(
    proxies: ProxyLauncher, origin: OriginServer
) -> None:
    """1,000 clients each send one byte of a request head every 2 s; ``request_header`` is
    6 s. A normal client is still served meanwhile, and every slow client is disconnected at
    the header timeout (408, or a plain close)."""
    if raise_nofile(SLOW + 1000) < SLOW + 500:
        pytest.skip("cannot raise this process's RLIMIT_NOFILE")
    p = proxies.start(
        timeouts={"request_header": HEADER_TIMEOUT, "client_idle": 30},
        backlog=2048,
        preexec_fn=_raise_child_limit,
    )
    o = origin
    head = f"GET {o.url}/v/slow HTTP/1.1\r\nHost: {o.authority}\r\nX-Slow: ".encode() + b"a" * 100
    t_start = time.monotonic()
    socks = _connect_many(p.address, SLOW, t_start + 20)
    sel = selectors.DefaultSelector()
    state: dict[socket.socket, dict] = {}
    for s in socks:
        s.setblocking(False)
        s.send(head[:1])
        state[s] = {"first": time.monotonic(), "sent": 1, "got": b"", "closed": None}
        sel.register(s, selectors.EVENT_READ)
    normal_latency = None
    next_trickle = time.monotonic() + 2
    deadline = time.monotonic() + HEADER_TIMEOUT + 20
    open_count = len(socks)
    try:
        while open_count and time.monotonic() < deadline:
            now = time.monotonic()
            if normal_latency is None and now - t_start > 2.5:
                t = time.monotonic()
                r = fetch(p.address, f"{o.url}/bytes/100", timeout=10)
                assert r.status == 200 and r.body == pattern(100), r
                normal_latency = time.monotonic() - t
            if now >= next_trickle:
                next_trickle += 2
                for s, st in state.items():
                    if st["closed"] is None and st["sent"] < len(head):
                        try:
                            s.send(head[st["sent"] : st["sent"] + 1])
                            st["sent"] += 1
                        except OSError:
                            pass
            for key, _ in sel.select(timeout=0.2):
                s = key.fileobj
                st = state[s]  # type: ignore[index]
                try:
                    data = s.recv(4096)  # type: ignore[union-attr]
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if data:
                    st["got"] += data
                    continue
                st["closed"] = time.monotonic()
                sel.unregister(s)
                open_count -= 1
    finally:
        sel.close()
        for s in socks:
            s.close()
    still_open = [st for st in state.values() if st["closed"] is None]
    got_408 = sum(1 for st in state.values() if st["got"].startswith(b"HTTP/1.1 408"))
    other = [st["got"][:60] for st in state.values() if st["got"] and b" 408 " not in st["got"]]
    after = [st["closed"] - st["first"] for st in state.values() if st["closed"] is not None]
    record_figure("slowloris.clients", SLOW)
    record_figure("slowloris.request_header_timeout_s", HEADER_TIMEOUT)
    record_figure("slowloris.got_408", got_408)
    record_figure("slowloris.closed_without_408", SLOW - got_408 - len(still_open))
    record_figure("slowloris.still_open_at_deadline", len(still_open))
    if after:
        record_figure(
            "slowloris.closed_after_first_byte_s", f"min {min(after):.1f} max {max(after):.1f}"
        )
    record_figure(
        "slowloris.normal_client_latency_s",
        "n/a" if normal_latency is None else f"{normal_latency:.3f}",
    )
    assert normal_latency is not None, "the normal client was never tried"
    assert not still_open, f"{len(still_open)} slow clients still connected after the timeout"
    assert not other, f"unexpected answers to slow clients: {other[:5]}"
    assert min(after) >= HEADER_TIMEOUT - 1, f"a slow client was cut early ({min(after):.1f} s)"
    assert p.alive()
    p.assert_clean_log()
