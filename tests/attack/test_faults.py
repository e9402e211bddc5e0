"""Faults: resets, silent peers, DNS that never answers, slow peers, descriptor exhaustion,
connection limits, and the process lifecycle (SIGTERM drain, SIGHUP reload, SIGUSR1 reopen).

Real ``twistd -n fwproxy`` processes over loopback sockets, except for the DNS case: real DNS
cannot be made to hang, so that one runs on a ``MemoryReactorClock`` with a resolver whose
Deferred never fires. Every wait is bounded; timing assertions are only generous "does not
hang" bounds.
"""

from __future__ import annotations

import resource
import signal
import socket
import threading
import time

import pytest

from fwproxy.config import loads
from fwproxy.testing import WORLD_CONFIG as CONFIG_TEXT
from fwproxy.testing import FakeResolver, World

from .support import (
    BlackholeServer,
    Closed,
    Conn,
    EchoServer,
    OriginServer,
    ProxyLauncher,
    fetch,
    pattern,
    port_accepts,
    proxy_config,
    request_bytes,
    wait_until,
)

MB = 1 << 20


def _get(c: Conn, url: str, host: str, extra: str = "") -> None:
    c.send(f"GET {url} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())


# -- upstream and client resets ------------------------------------------------------------------


def test_upstream_reset_mid_body(proxies: ProxyLauncher, origin: OriginServer) -> None:
    """The origin resets the connection half-way through a Content-Length body: the client's
    connection is closed with the response visibly incomplete; a download in flight on another
    connection is unaffected, and new clients are served."""
    p = proxies.start()
    o = origin
    other: dict[str, object] = {}

    def download() -> None:
        try:
            other["resp"] = fetch(p.address, f"{o.url}/slowbody/100000/5", timeout=30)
        except Exception as e:  # noqa: BLE001 - reported below
            other["error"] = e

    t = threading.Thread(target=download)
    t.start()
    time.sleep(0.2)
    with Conn(p.address, timeout=10) as c:
        _get(c, f"{o.url}/reset/200000", o.authority)
        resp = c.response("GET", timeout=10)
        assert resp.status == 200
        assert not resp.complete, "a reset upstream body was presented as complete"
        assert len(resp.body) < 200000
        assert c.closed_within(5), "the client connection stayed open after the upstream reset"
    t.join(30)
    assert "error" not in other, other
    r = other["resp"]
    assert r.status == 200 and r.body == pattern(100000), "the other download was disturbed"  # type: ignore[attr-defined]
    again = fetch(p.address, f"{o.url}/bytes/1000")
    assert again.status == 200 and again.body == pattern(1000)
    p.assert_clean_log()


def test_client_reset_mid_upload(proxies: ProxyLauncher, origin: OriginServer) -> None:
    """The client resets half-way through an upload: the origin sees the request aborted (its
    body never completes), the transaction is logged as aborted, and the proxy serves others."""
    p = proxies.start()
    o = origin
    c = Conn(p.address, timeout=10)
    total = 4 * MB
    c.send(
        f"POST {o.url}/upload HTTP/1.1\r\nHost: {o.authority}\r\nContent-Length: {total}\r\n\r\n".encode()
    )
    c.send(pattern(256 * 1024))
    wait_until(
        lambda: o.raw_snapshot() and len(o.raw_snapshot()[0]) > 100_000,
        10,
        "the upload to reach the origin",
    )
    c.abort()
    recs = wait_until(lambda: o.snapshot(), 10, "the origin to notice the aborted upload")
    assert len(recs) == 1
    assert recs[0].target == b"/upload"
    assert not recs[0].complete, "the origin got a complete request from an aborted upload"
    assert len(recs[0].body) < total
    line = p.access_log and wait_until(
        lambda: (
            p.access_log.exists()
            and "/upload" in p.access_log.read_text()
            and p.access_log.read_text()
        ),
        10,
        "the access log line",
    )
    assert "TCP_MISS_ABORTED" in line, line
    r = fetch(p.address, f"{o.url}/upload", "POST", body=b"x" * 1000)
    assert r.status == 200 and r.body.startswith(b"1000 ")
    p.assert_clean_log()


def test_upstream_that_never_answers_gets_504(
    proxies: ProxyLauncher, blackhole: BlackholeServer
) -> None:
    p = proxies.start(timeouts={"upstream_first_byte": 2})
    t0 = time.monotonic()
    r = fetch(p.address, f"http://{blackhole.authority}/", timeout=20)
    elapsed = time.monotonic() - t0
    assert r.status == 504, r
    assert 1.5 <= elapsed < 15, f"504 after {elapsed:.1f} s; upstream_first_byte is 2 s"
    p.assert_clean_log()


# -- DNS that never answers (protocol level) ----------------------------------------------------

DST_ACL_CONFIG = CONFIG_TEXT.replace(
    'rules = ["deny connect !ssl", "allow clients", "deny all"]',
    'rules = ["deny to_linklocal", "deny connect !ssl", "allow clients", "deny all"]',
)


@pytest.mark.parametrize(
    "config_text",
    [CONFIG_TEXT, DST_ACL_CONFIG],
    ids=["no-dst-acl", "deny-to_linklocal-first"],
)
@pytest.mark.parametrize(
    "request_bytes_",
    [
        b"GET http://never.test/ HTTP/1.1\r\nHost: never.test\r\n\r\n",
        b"CONNECT never.test:443 HTTP/1.1\r\nHost: never.test:443\r\n\r\n",
    ],
    ids=["GET", "CONNECT"],
)
def test_dns_that_never_answers_gets_504_after_connect_timeout(
    config_text: str, request_bytes_: bytes
) -> None:
    """The resolver's Deferred never fires. The lookup is part of connecting, so the client
    gets 504 when ``timeouts.connect`` has passed — also when the lookup is made by a ``dst``
    ACL (the shipped default's first rule is ``deny to_linklocal``, a dst ACL)."""
    config = loads(config_text)
    resolver = FakeResolver(hang=True)
    world = World(config=config, resolver=resolver)
    world.send(request_bytes_)
    assert resolver.calls == ["never.test"], resolver.calls
    connect = config.timeouts.connect
    world.advance(connect - 0.5, step=0.5)
    assert world.client_t.value() == b"", "answered before the connect timeout"
    world.advance(1.0, step=0.5)
    out = world.client_t.value()
    assert out.startswith(b"HTTP/1.1 504 "), (
        f"no 504 {connect + 0.5:g} s after the request (connect = {connect:g} s); "
        f"client got {out[:200]!r}, closed={world.client_lost}"
    )
    world.run_out_the_clock()
    assert world.client_lost, "the connection never closed"


# -- slow peers: bounded memory ------------------------------------------------------------------


def _rss_sampler(p, stop: threading.Event, samples: list[int]) -> threading.Thread:
    def run() -> None:
        while not stop.is_set():
            try:
                samples.append(p.rss_kib())
            except (OSError, AssertionError):
                return
            time.sleep(0.1)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _warm_up(p, o: OriginServer) -> None:
    for _ in range(3):
        r = fetch(p.address, f"{o.url}/bytes/300000")
        assert r.status == 200
        r = fetch(p.address, f"{o.url}/upload", "POST", body=pattern(300000))
        assert r.status == 200


def test_slow_reader_on_a_large_download_keeps_rss_bounded(
    proxies: ProxyLauncher, origin: OriginServer
) -> None:
    """200 MB offered by the origin as fast as it can, read by the client at ~2 MB/s for 4 s:
    the proxy must push back on the origin, not buffer (RSS growth < 20 MB)."""
    p = proxies.start()
    o = origin
    _warm_up(p, o)
    base = p.rss_kib()
    samples: list[int] = []
    stop = threading.Event()
    sampler = _rss_sampler(p, stop, samples)
    got = 0
    with Conn(p.address, timeout=10) as c:
        _get(c, f"{o.url}/stream/{200 * MB}", o.authority)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 4.0:
            c.sock.settimeout(5)
            data = c.sock.recv(64 * 1024)
            assert data, "the download ended early"
            got += len(data)
            ahead = got / (2 * MB) - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
        c.abort()
    stop.set()
    sampler.join(2)
    peak = max(samples + [p.rss_kib()])
    growth_mb = (peak - base) / 1024
    print(
        f"slow reader: read {got / MB:.1f} MB; proxy RSS {base} KiB -> peak {peak} KiB "
        f"(+{growth_mb:.1f} MB)"
    )
    assert got > 4 * MB
    assert growth_mb < 20, f"proxy RSS grew {growth_mb:.1f} MB relaying to a slow reader"
    assert fetch(p.address, f"{o.url}/bytes/10").status == 200
    p.assert_clean_log()


def test_large_upload_to_a_slow_origin_keeps_rss_bounded(
    proxies: ProxyLauncher, origin: OriginServer
) -> None:
    """A client uploads (announcing 200 MB) as fast as it can to an origin reading ~2 MB/s, for
    4 s: the proxy must stop reading the client, not buffer (RSS growth < 20 MB)."""
    p = proxies.start()
    o = origin
    _warm_up(p, o)
    base = p.rss_kib()
    samples: list[int] = []
    stop = threading.Event()
    sampler = _rss_sampler(p, stop, samples)
    sent = 0
    c = Conn(p.address, timeout=10)
    c.send(
        request_bytes(
            "POST",
            f"{o.url}/slowupload/{2 * MB}",
            [("Host", o.authority), ("Content-Length", str(200 * MB))],
        )
    )
    block = pattern(256 * 1024)
    c.sock.settimeout(0.5)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 4.0:
        try:
            sent += c.sock.send(block)
        except TimeoutError:
            continue
    c.abort()
    stop.set()
    sampler.join(2)
    peak = max(samples + [p.rss_kib()])
    growth_mb = (peak - base) / 1024
    print(
        f"slow origin: client sent {sent / MB:.1f} MB; proxy RSS {base} KiB -> peak {peak} "
        f"KiB (+{growth_mb:.1f} MB)"
    )
    assert sent > 2 * MB
    assert growth_mb < 20, f"proxy RSS grew {growth_mb:.1f} MB relaying to a slow origin"
    assert fetch(p.address, f"{o.url}/bytes/10").status == 200
    p.assert_clean_log()


# -- descriptor exhaustion -----------------------------------------------------------------------


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


def _open_many(address: tuple[str, int], n: int) -> list[socket.socket]:
    """``n`` client connections (as many as the kernel completes; none is required to be
    accepted by the proxy)."""
    socks = []
    deadline = time.monotonic() + 20
    for _ in range(n):
        if time.monotonic() > deadline:
            break
        s = socket.socket()
        s.settimeout(1.0)
        try:
            s.connect(address)
        except OSError:
            s.close()
            continue
        socks.append(s)
    return socks


def _cpu_over(p, seconds: float) -> float:
    before = p.cpu_seconds()
    time.sleep(seconds)
    return p.cpu_seconds() - before


@pytest.mark.parametrize("max_connections", [1000, 0], ids=["real-EMFILE", "fd-budget"])
def test_out_of_descriptors_does_not_spin_and_recovers(
    proxies: ProxyLauncher, origin: OriginServer, max_connections: int
) -> None:
    """RLIMIT_NOFILE 64 and 150 client connections. With ``max_connections = 1000`` the proxy
    runs into EMFILE in accept(); with the default (derived from the descriptor limit) it
    refuses with 503 first. Either way it must not spin (CPU < 0.5 s over 2 s), and once the
    clients are gone a new one is served."""
    limits = {"max_connections": max_connections} if max_connections else {}
    p = proxies.start(
        limits=limits, timeouts={"request_header": 60, "client_idle": 60}, preexec_fn=_limit_fds
    )
    o = origin
    assert fetch(p.address, f"{o.url}/bytes/10").status == 200
    socks = _open_many(p.address, 150)
    try:
        assert len(socks) > 64, f"only {len(socks)} connections were established"
        time.sleep(1.0)
        cpu = _cpu_over(p, 2.0)
        print(
            f"{len(socks)} clients at RLIMIT_NOFILE 64 (max_connections={max_connections}): "
            f"proxy CPU {cpu:.2f} s over 2 s, {p.fd_count()} fds open"
        )
        assert cpu < 0.5, f"the proxy spins: {cpu:.2f} s of CPU in 2 s"
        assert p.alive()
        if not max_connections:
            refused = 0
            for s in socks:
                s.settimeout(0.05)
                try:
                    if s.recv(64).startswith(b"HTTP/1.1 503"):
                        refused += 1
                except OSError:
                    pass
            assert refused > 0, "no connection was refused with 503 beyond the fd budget"
    finally:
        for s in socks:
            s.close()
    time.sleep(1.0)
    r = wait_until(
        lambda: _try_fetch(p.address, f"{o.url}/bytes/10"),
        15,
        "a new client to be served after the flood",
    )
    assert r.status == 200 and r.body == pattern(10)
    assert p.alive()


def _try_fetch(address, url):
    try:
        r = fetch(address, url, timeout=3)
    except (OSError, Closed):
        return None
    return r if r.status == 200 else None


# -- connection and body limits ------------------------------------------------------------------


def test_max_connections_per_client(proxies: ProxyLauncher, origin: OriginServer) -> None:
    """``max_connections_per_client = 5``: five keep-alive connections in use, the sixth gets
    503 and is closed; the five are still served; once one closes, a new one is admitted."""
    p = proxies.start(limits={"max_connections_per_client": 5})
    o = origin
    # the start-up probe's connection counts until the proxy has seen it close
    time.sleep(0.3)
    held = [Conn(p.address, timeout=10) for _ in range(5)]
    try:
        for c in held:
            _get(c, f"{o.url}/bytes/10", o.authority)
            assert c.response("GET", timeout=10).status == 200
        with Conn(p.address, timeout=10) as sixth:
            _get(sixth, f"{o.url}/bytes/10", o.authority)
            r = sixth.response("GET", timeout=10)
            assert r.status == 503, r
            assert sixth.closed_within(5)
        for c in held:
            _get(c, f"{o.url}/bytes/10", o.authority)
            r = c.response("GET", timeout=10)
            assert r.status == 200 and r.body == pattern(10)
        held.pop().close()
        r = wait_until(
            lambda: _try_fetch(p.address, f"{o.url}/bytes/10"),
            5,
            "a connection to be admitted once one closed",
        )
        assert r.status == 200
    finally:
        for c in held:
            c.close()
    p.assert_clean_log()


def test_max_connections_per_client_counts_silent_connections(
    proxies: ProxyLauncher, origin: OriginServer
) -> None:
    """Five connections from one address that have not sent a byte yet are five connections
    from that address (``[limits]``: "max_connections_per_client: from one client address"):
    a sixth one's request gets 503. Otherwise one address can hold ``max_connections`` silent
    connections for ``request_header`` seconds each, which is what the limit is for."""
    p = proxies.start(limits={"max_connections_per_client": 5})
    o = origin
    # the start-up probe's connection counts until the proxy has seen it close
    time.sleep(0.3)
    held = [Conn(p.address, timeout=10) for _ in range(5)]
    try:
        time.sleep(0.3)
        with Conn(p.address, timeout=10) as sixth:
            _get(sixth, f"{o.url}/bytes/10", o.authority)
            r = sixth.response("GET", timeout=10)
            assert r.status == 503, (
                f"a 6th connection from one address was served ({r.status}) while 5 silent "
                "ones were open: silent connections are not counted per client"
            )
    finally:
        for c in held:
            c.close()
    p.assert_clean_log()


def test_max_body_size(proxies: ProxyLauncher, origin: OriginServer) -> None:
    p = proxies.start(limits={"max_body_size": 1000})
    o = origin
    ok = fetch(p.address, f"{o.url}/upload", "POST", body=b"a" * 1000)
    assert ok.status == 200 and ok.body.startswith(b"1000 ")
    o.clear()
    big = fetch(p.address, f"{o.url}/upload", "POST", body=b"a" * 2000)
    assert big.status == 413, big
    time.sleep(0.2)
    assert o.snapshot() == [], "a request announcing too large a body was forwarded"
    # chunked: the size is only known while streaming
    body = b"".join(b"%x\r\n" % 500 + b"b" * 500 + b"\r\n" for _ in range(6)) + b"0\r\n\r\n"
    with Conn(p.address, timeout=10) as c:
        c.send(
            request_bytes(
                "POST",
                f"{o.url}/upload",
                [("Host", o.authority), ("Transfer-Encoding", "chunked")],
                body,
            )
        )
        r = c.response("POST", timeout=10)
        assert r.status == 413, r
        assert c.closed_within(5)
    time.sleep(0.3)
    assert not [rec for rec in o.snapshot() if rec.complete], o.snapshot()
    p.assert_clean_log()


# -- lifecycle: SIGTERM, SIGHUP, SIGUSR1 ---------------------------------------------------------


def test_sigterm_drains_a_slow_download(proxies: ProxyLauncher, origin: OriginServer) -> None:
    p = proxies.start(timeouts={"drain": 5})
    o = origin
    n = 100_000
    result: dict[str, object] = {}

    def download() -> None:
        try:
            result["resp"] = fetch(p.address, f"{o.url}/slowbody/{n}/20", timeout=30)
        except Exception as e:  # noqa: BLE001
            result["error"] = e

    t = threading.Thread(target=download)
    t.start()
    wait_until(lambda: o.snapshot(), 5, "the download to start")
    time.sleep(0.3)
    p.signal(signal.SIGTERM)
    wait_until(
        lambda: not port_accepts(p.host, p.port, 0.2), 3, "the proxy to stop accepting connections"
    )
    t.join(30)
    rc = p.wait_exit(15)
    assert "error" not in result, result
    r = result["resp"]
    assert r.status == 200 and r.complete and r.body == pattern(n), (  # type: ignore[attr-defined]
        "the download in flight was not allowed to finish"
    )
    p.assert_clean_log()
    assert rc == 0, f"exit code {rc} (not 0) after SIGTERM:\n{p.output()[-3000:]}"


def test_sigterm_cuts_an_idle_tunnel_after_drain(proxies: ProxyLauncher, echo: EchoServer) -> None:
    p = proxies.start(timeouts={"drain": 1}, tunnel_ports=(echo.port,))
    c = Conn(p.address, timeout=10)
    try:
        c.send(f"CONNECT {echo.authority} HTTP/1.1\r\nHost: {echo.authority}\r\n\r\n".encode())
        r = c.response("CONNECT", timeout=10)
        assert r.status == 200
        c.send(b"ping")
        c.sock.settimeout(5)
        assert c.sock.recv(10) == b"ping"
        mark = len(p.output())
        t0 = time.monotonic()
        p.signal(signal.SIGTERM)
        rc = p.wait_exit(10)
        elapsed = time.monotonic() - t0
        assert rc is not None, "the proxy did not exit within 10 s of SIGTERM with drain = 1"
        assert elapsed < 4, f"took {elapsed:.1f} s to exit with drain = 1"
        assert c.closed_within(3), "the tunnel was not closed"
        log = p.output()[mark:]
        assert "drain timeout" in log and "cutting 1 connection" in log, log
        assert rc == 0, f"exit code {rc} (not 0) after SIGTERM:\n{p.output()[-3000:]}"
    finally:
        c.close()


def test_sighup_applies_new_policy_while_a_tunnel_keeps_working(
    proxies: ProxyLauncher, origin: OriginServer, echo: EchoServer
) -> None:
    o = origin
    p = proxies.start(tunnel_ports=(echo.port,))
    assert fetch(p.address, f"{o.url}/bytes/10").status == 200
    tunnel = Conn(p.address, timeout=10)
    keep = Conn(p.address, timeout=10)
    try:
        tunnel.send(f"CONNECT {echo.authority} HTTP/1.1\r\nHost: {echo.authority}\r\n\r\n".encode())
        assert tunnel.response("CONNECT").status == 200
        _get(keep, f"{o.url}/bytes/10", o.authority)
        assert keep.response().status == 200
        new = proxy_config(
            p.port,
            access_log=p.access_log,
            tunnel_ports=(echo.port,),
            acls=f"[acl.blocked]\nport = [{o.port}]\n",
            rules=["deny blocked", "deny connect !tunnel_ports", "allow clients", "deny all"],
        )
        p.config_path.write_text(new)
        mark = len(p.output())
        p.signal(signal.SIGHUP)
        p.wait_output(r"configuration reloaded", 10, after=mark)
        denied = fetch(p.address, f"{o.url}/bytes/10")
        assert denied.status == 403, denied
        _get(keep, f"{o.url}/bytes/10", o.authority)  # a new request on an old connection
        assert keep.response().status == 403
        tunnel.send(b"still there?")
        tunnel.sock.settimeout(5)
        assert tunnel.sock.recv(64) == b"still there?", "the open tunnel broke on reload"
    finally:
        tunnel.close()
        keep.close()
    p.assert_clean_log()


BAD_CONFIGS = {
    "not-toml": lambda good: "this is [not toml\n",
    "bad-value": lambda good: good.replace("connect = 5", "connect = -1"),
    "unknown-section": lambda good: good + "\n[nonsense]\nx = 1\n",
}


@pytest.mark.parametrize("bad", list(BAD_CONFIGS))
def test_sighup_with_an_invalid_config_keeps_the_old_one(
    proxies: ProxyLauncher, origin: OriginServer, bad: str
) -> None:
    o = origin
    p = proxies.start()
    good = p.config_path.read_text()
    assert "connect = 5" in good
    p.config_path.write_text(BAD_CONFIGS[bad](good))
    mark = len(p.output())
    p.signal(signal.SIGHUP)
    p.wait_output(r"new configuration rejected", 10, after=mark)
    assert p.alive()
    r = fetch(p.address, f"{o.url}/bytes/10")
    assert r.status == 200 and r.body == pattern(10)
    p.assert_clean_log()


def test_sigusr1_reopens_the_access_log(proxies: ProxyLauncher, origin: OriginServer) -> None:
    o = origin
    p = proxies.start()
    log = p.access_log
    assert log is not None
    assert fetch(p.address, f"{o.url}/v/first").status == 200
    wait_until(lambda: log.exists() and "/v/first" in log.read_text(), 5, "the first log line")
    rotated = log.with_name(log.name + ".1")
    log.rename(rotated)
    mark = len(p.output())
    p.signal(signal.SIGUSR1)
    p.wait_output(r"log files re-opened", 10, after=mark)
    assert fetch(p.address, f"{o.url}/v/second").status == 200
    wait_until(
        lambda: log.exists() and "/v/second" in log.read_text(),
        5,
        "the second request in a new access log file",
    )
    assert "/v/first" not in log.read_text()
    assert "/v/second" not in rotated.read_text()
    p.assert_clean_log()
