"""The admin listener, report-only mode and rate limits end to end: real ``twistd -n fwproxy``
processes (one, and ``--workers 2``), real curl and raw sockets, all on loopback.

- ``/healthz``, ``/readyz``, ``/metrics`` on the admin port, beside the proxy port's own
  ``/healthz``; ``/readyz`` turns ``503`` as soon as SIGTERM starts the drain;
- with ``--workers 2`` one scrape of the admin port counts every process's transactions;
- ``[access] mode = "report"`` relays what the rules deny, logs ``would_deny`` and counts it,
  while ``deny to_linklocal`` still denies;
- ``[limits] client_request_rate``: ``429`` with ``Retry-After``, counted.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fwp_support import (
    REPO,
    child_env,
    endpoint,
    free_port,
    proxy_config,
    wait_until,
)
from prometheus_client.parser import text_string_to_metric_families


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one scrape of ``/metrics`` on the admin port."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert b"\r\nContent-Type: text/plain; version=" in head
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric(samples, name: str, **labels: str) -> float:  # type: ignore[no-untyped-def]
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def admin_get(port: int, path: str) -> tuple[int, bytes]:
    """Status and body of ``GET path`` on the admin port (plain sockets: no curl needed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def ready(port: int) -> bool:
    """Whether ``/readyz`` on the admin port answers 200 (False while nothing listens)."""
    try:
        return admin_get(port, "/readyz")[0] == 200
    except OSError:
        return False


def admin_section(port: int, extra: str = "") -> str:
    return f'[admin]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n{extra}'


def test_health_readiness_and_metrics(proxy, origin, run_curl, tmp_path: Path):
    admin = free_port()
    port = free_port()
    log = tmp_path / "access.log"
    p = proxy.start(
        proxy_config([endpoint("127.0.0.1", port)], access_log=log, extra=admin_section(admin)),
        port=port,
        access_log=log,
    )
    assert admin_get(admin, "/healthz") == (200, b"ok\n")
    assert admin_get(admin, "/readyz") == (200, b"ready\n")
    assert admin_get(admin, "/nope")[0] == 404
    # the proxy port keeps its own health check, for load balancers
    assert run_curl(f"http://127.0.0.1:{port}/healthz").status == 200
    before = scrape(admin)
    assert metric(before, "fwproxy_active_connections") == 0
    gets = [run_curl("-x", p.url, f"{origin.url}/v/x") for _ in range(3)]
    assert [g.status for g in gets] == [200, 200, 200], gets[0].stderr
    r = run_curl("-p", "-x", p.url, f"http://{origin.authority}/")  # CONNECT to a port not 443
    assert r.connect_status == 403
    samples = scrape(admin)
    assert metric(samples, "fwproxy_transactions_total", result="TCP_MISS", method="GET") == 3
    assert metric(samples, "fwproxy_transactions_total", result="TCP_DENIED", method="CONNECT") == 1
    assert metric(samples, "fwproxy_denials_total", rule="deny connect !tunnel_ports") == 1
    assert metric(samples, "fwproxy_received_bytes_total") > 0
    # the three answers and the 403 (heads and bodies), the health check not counted
    sent = metric(samples, "fwproxy_sent_bytes_total")
    assert sum(len(g.body) for g in gets) < sent < sum(len(g.body) for g in gets) + 2000
    # one connection to the origin, kept in the pool for the next two: one connect timed
    assert metric(samples, "fwproxy_upstream_connect_seconds_count") == 1
    # no probe, no scrape is in the access log: three GETs and the CONNECT
    assert len(p.access_lines(4)) == 4
    p.assert_clean_log()


def test_readyz_turns_503_while_draining(proxy, echo, tmp_path: Path):
    admin, port = free_port(), free_port()
    config = proxy_config(
        [endpoint("127.0.0.1", port)],
        tunnel_ports=[echo.port],
        extra=admin_section(admin),
    )
    p = proxy.start(config, port=port)
    tunnel = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        tunnel.sendall(f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert tunnel.recv(4096).startswith(b"HTTP/1.1 200 ")
        tunnel.sendall(b"ping")
        assert tunnel.recv(4096) == b"ping"
        assert metric(scrape(admin), "fwproxy_active_tunnels") == 1
        assert admin_get(admin, "/readyz")[0] == 200
        p.signal(signal.SIGTERM)
        status, body = wait_until(
            lambda: (r := admin_get(admin, "/readyz"))[0] == 503 and r, 10, "readyz to turn 503"
        )
        assert body == b"not ready: draining\n"
        assert admin_get(admin, "/healthz")[0] == 200  # alive, though not ready
        tunnel.sendall(b"still")  # the tunnel in flight is served to its end
        assert tunnel.recv(4096) == b"still"
    finally:
        tunnel.close()
    assert p.wait_exit(15) == 0


def _get_new_connection(port: int, url: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


@pytest.mark.slow
def test_one_scrape_sees_every_worker(origin, tmp_path: Path):
    from prometheus_client.multiprocess import MultiProcessCollector

    admin, port = free_port(), free_port()
    shared = tmp_path / "metrics"
    shared.mkdir()
    conf = tmp_path / "fw.toml"
    conf.write_text(
        proxy_config(
            [endpoint("127.0.0.1", port)],
            access_log=tmp_path / "access.log",
            extra=admin_section(admin, f'metrics_dir = "{shared}"\n'),
        )
    )
    out = tmp_path / "out.txt"
    with open(out, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "fwproxy", "--config", str(conf), "--workers", "2"],
            stdout=sink, stderr=subprocess.STDOUT, env=child_env(), cwd=tmp_path,
        )  # fmt: skip
    try:
        wait_until(lambda: ready(admin), 15, "the admin listener")
        # both processes listen on the proxy port (SO_REUSEPORT): the kernel spreads the
        # connections between them; each new connection is one transaction
        wait_until(lambda: len(list(shared.glob("counter_*.db"))) == 2, 15, "both processes")
        n = 40
        answers = [_get_new_connection(port, f"{origin.url}/v/x") for _ in range(n)]
        assert all(a.startswith(b"HTTP/1.1 200") for a in answers)

        def total() -> float:
            return metric(
                scrape(admin), "fwproxy_transactions_total", result="TCP_MISS", method="GET"
            )

        # a worker writes its numbers once a second: one scrape soon has them all
        wait_until(lambda: total() == n, 10, f"{n} transactions in one scrape")
        per_process = []
        for f in sorted(shared.glob("counter_*.db")):
            merged = MultiProcessCollector.merge([str(f)])
            per_process.append(
                sum(
                    s.value
                    for m in merged
                    for s in m.samples
                    if s.name == "fwproxy_transactions_total"
                )
            )
        assert sum(per_process) == n and all(per_process), per_process
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = out.read_text()
    assert "Traceback" not in text, text


REPORT = """
[proxy]
listen = ["tcp:{port}:interface=127.0.0.1"]
[acl.clients]
src = ["127.0.0.1/32"]
[acl.tunnel_ports]
port = [443]
[acl.connect]
method = ["CONNECT"]
[access]
mode = "report"
rules = ["deny to_linklocal", "deny connect !tunnel_ports", "allow clients", "deny all"]
[log]
access = "{log}"
format = "json"
[admin]
listen = ["tcp:{admin}:interface=127.0.0.1"]
"""


def test_report_only_mode(proxy, echo, run_curl, tmp_path: Path):
    admin, port = free_port(), free_port()
    log = tmp_path / "access.log"
    p = proxy.start(REPORT.format(port=port, log=log, admin=admin), port=port, access_log=log)
    assert "access.mode" in p.output()  # the warning at start
    # a CONNECT to a port the rules deny: relayed, and logged with the rule
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
        s.sendall(b"hello")
        assert s.recv(4096) == b"hello"
    # the metadata service stays out of reach
    r = run_curl("-x", p.url, "http://169.254.169.254/latest/meta-data/")
    assert r.status == 403
    lines = [json.loads(line) for line in p.access_lines(2)]
    tunnel = next(line for line in lines if line["method"] == "CONNECT")
    assert (tunnel["result"], tunnel["would_deny"]) == ("TCP_TUNNEL", "deny connect !tunnel_ports")
    denied = next(line for line in lines if line["method"] == "GET")
    assert (denied["status"], denied["would_deny"]) == (403, None)
    samples = scrape(admin)
    assert metric(samples, "fwproxy_would_deny_total", rule="deny connect !tunnel_ports") == 1
    assert metric(samples, "fwproxy_denials_total", rule="deny to_linklocal") == 1
    p.assert_clean_log()


def test_rate_limit(proxy, origin, run_curl, tmp_path: Path):
    admin, port = free_port(), free_port()
    extra = "[limits]\nclient_request_rate = 0.2\nclient_request_burst = 2\n" + admin_section(admin)
    p = proxy.start(proxy_config([endpoint("127.0.0.1", port)], extra=extra), port=port)
    statuses = [run_curl("-x", p.url, f"{origin.url}/v/x").status for _ in range(2)]
    assert statuses == [200, 200]
    r = run_curl("-x", p.url, f"{origin.url}/v/x")
    assert r.status == 429
    assert r.header("Retry-After") in (["5"], ["4"], ["3"])  # a token every 5 s
    samples = scrape(admin)
    assert metric(samples, "fwproxy_rate_limited_total", limit="client_request_rate") == 1
    p.assert_clean_log()


def test_the_default_admin_port_taken_is_only_a_warning(proxy, tmp_path: Path):
    # another process holds 127.0.0.1:9128 (or someone else's proxy does already)
    holder = socket.socket()
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            holder.bind(("127.0.0.1", 9128))
            holder.listen(1)
        except OSError:
            pass  # taken already: the same situation
        port = free_port()
        p = proxy.start(proxy_config([endpoint("127.0.0.1", port)]), port=port)
        p.wait_output(r"no admin listener: cannot listen on tcp:9128:interface=127\.0\.0\.1")
        assert p.alive
    finally:
        holder.close()


def test_an_admin_port_taken_in_the_file_stops_start_up(tmp_path: Path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    taken = holder.getsockname()[1]
    try:
        conf = tmp_path / "fw.toml"
        conf.write_text(
            proxy_config([endpoint("127.0.0.1", free_port())], extra=admin_section(taken))
        )
        proc = subprocess.run(
            [sys.executable, "-m", "fwproxy.cli", "run", "--config", str(conf)],
            capture_output=True, text=True, timeout=30, env=child_env(), cwd=REPO,
        )  # fmt: skip
    finally:
        holder.close()
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"fwproxy: cannot listen on tcp:{taken}:interface=127.0.0.1 ([admin] listen): "
        "address already in use"
    )
    assert "Traceback" not in proc.stderr
