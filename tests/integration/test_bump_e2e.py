"""TLS interception end to end on loopback: a real proxy (the ``fwproxy`` fixture) with
``[intercept]`` and a CA made by ``fwproxy ca init``, a TLS origin whose certificate comes from
another CA (trusted by the proxy through ``[tls] ca_file``), and real clients: curl
(``--cacert`` the interception CA), requests and httpx trusting it, and clients that do not.
"""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fwp_origin import pattern
from support.certs import CA, TLSOriginServer
from support.servers import running, wait_until

from fwproxy import cacert
from fwproxy.record import TCP_MISS, TCP_TUNNEL
from fwproxy.testing import FakeResolver

CURL = shutil.which("curl") or "/usr/bin/curl"
RESOLVER = FakeResolver(
    {"localhost": ["127.0.0.1"], "bump.test": ["127.0.0.1"], "splice.test": ["127.0.0.1"]}
)


@pytest.fixture(scope="module")
def origin_ca() -> CA:
    return CA("origin CA")


@pytest.fixture(scope="module")
def tls_origin(origin_ca: CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    leaf = origin_ca.issue("localhost", "bump.test", "splice.test")
    with running(TLSOriginServer(leaf, tmp_path_factory.mktemp("origin"))) as s:
        yield s


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("intercept") / "ca"
    cacert.init(str(directory))
    return directory


@pytest.fixture(scope="module")
def origin_ca_file(origin_ca: CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return origin_ca.write(tmp_path_factory.mktemp("trust"), "origin-ca")


def config(
    port: int,
    ca_dir: Path,
    trust: Path | None,
    rules: str = '"bump all"',
    access: str = '"allow localhost"',
) -> str:
    tls = f'[tls]\nca_file = "{trust}"\n' if trust else ""
    return f"""
[acl.localhost]
src = ["127.0.0.0/8"]
[acl.bump_names]
ssl_sni = ["bump.test", "localhost"]
[acl.splice_names]
dstdomain = ["splice.test"]
[acl.secret]
url_regex = ["^https://[^/]+/secret"]
[access]
rules = [{access}]
[tunnel]
peek_ports = [{port}]
[intercept]
ca = "{ca_dir}"
rules = [{rules}]
{tls}
"""


def curl(proxy: Any, url: str, cacert_path: Path, *more: str) -> subprocess.CompletedProcess:
    args = [CURL, "-sS", "--noproxy", "", "--proxy", proxy.url, "--cacert", str(cacert_path)]
    return subprocess.run([*args, *more, url], capture_output=True, timeout=30)


def test_curl_gets_through_a_bumped_tunnel(
    fwproxy: Any, tls_origin: Any, ca_dir: Path, origin_ca_file: Path
) -> None:
    proxy = fwproxy(config(tls_origin.port, ca_dir, origin_ca_file), resolver=RESOLVER)
    url = f"https://bump.test:{tls_origin.port}/bytes/3000"
    out = curl(proxy, url, ca_dir / "ca.pem", "--http1.1")
    assert out.returncode == 0, out.stderr
    assert out.stdout == pattern(3000)
    recs = proxy.wait_for_records(2)
    inner, tunnel = recs
    assert (inner.method, inner.target, inner.result, inner.status) == ("GET", url, TCP_MISS, 200)
    assert (tunnel.method, tunnel.result, tunnel.sni) == ("CONNECT", TCP_TUNNEL, "bump.test")
    assert tunnel.notes.get("fwproxy.tls") == "bumped"
    assert tls_origin.server_names[-1] == "bump.test"


def test_a_large_body_through_a_bumped_tunnel(
    fwproxy: Any, tls_origin: Any, ca_dir: Path, origin_ca_file: Path
) -> None:
    proxy = fwproxy(config(tls_origin.port, ca_dir, origin_ca_file), resolver=RESOLVER)
    size = 3_000_000
    url = f"https://bump.test:{tls_origin.port}/bytes/{size}"
    out = curl(proxy, url, ca_dir / "ca.pem", "--limit-rate", "2M")
    assert out.returncode == 0, out.stderr
    assert out.stdout == pattern(size)


def test_curl_offering_h2_still_gets_http1(
    fwproxy: Any, tls_origin: Any, ca_dir: Path, origin_ca_file: Path
) -> None:
    proxy = fwproxy(config(tls_origin.port, ca_dir, origin_ca_file), resolver=RESOLVER)
    url = f"https://bump.test:{tls_origin.port}/bytes/10"
    out = curl(proxy, url, ca_dir / "ca.pem", "--http2", "-w", "%{http_version}")
    assert out.returncode == 0, out.stderr
    assert out.stdout == pattern(10) + b"1.1"


def test_keep_alive_and_the_access_log_lines(
    fwproxy: Any, tls_origin: Any, ca_dir: Path, origin_ca_file: Path
) -> None:
    proxy = fwproxy(config(tls_origin.port, ca_dir, origin_ca_file), resolver=RESOLVER)
    base = f"https://bump.test:{tls_origin.port}"
    # one curl, two URLs: the second request goes over the same bumped tunnel
    out = curl(proxy, f"{base}/bytes/7", ca_dir / "ca.pem", f"{base}/bytes/5")
    assert out.returncode == 0, out.stderr
    assert out.stdout == pattern(5) + pattern(7)
    recs = proxy.wait_for_records(3)
    authority = f"bump.test:{tls_origin.port}"
    assert [r.target for r in recs] == [f"{base}/bytes/5", f"{base}/bytes/7", authority]
    lines = proxy.log_lines() if hasattr(proxy, "log_lines") else []
    assert all(" https://" in line for line in lines[:2])


def test_requests_and_httpx_trust_the_ca(
    fwproxy: Any, tls_origin: Any, ca_dir: Path, origin_ca_file: Path
) -> None:
    requests = pytest.importorskip("requests")
    httpx = pytest.importorskip("httpx")
    proxy = fwproxy(config(tls_origin.port, ca_dir, origin_ca_file), resolver=RESOLVER)
    url = f"https://localhost:{tls_origin.port}/bytes/100"
    r = requests.get(url, proxies={"https": proxy.url}, verify=str(ca_dir / "ca.pem"), timeout=10)
    assert r.status_code == 200 and r.content == pattern(100)
    trust = ssl.create_default_context(cafile=str(ca_dir / "ca.pem"))
    with httpx.Client(proxy=proxy.url, verify=trust, timeout=10) as client:
        r2 = client.get(url)
    assert r2.status_code == 200 and r2.content == pattern(100)


def test_a_client_not_trusting_the_ca_fails_and_is_logged(
    fwproxy: Any, tls_origin: Any, ca_dir: Path, origin_ca_file: Path, origin_ca: CA
) -> None:
    proxy = fwproxy(config(tls_origin.port, ca_dir, origin_ca_file), resolver=RESOLVER)
    # the client trusts the origin's CA only (as a pinning client would)
    out = curl(proxy, f"https://bump.test:{tls_origin.port}/", origin_ca_file)
    assert out.returncode == 60, out.stderr  # curl: peer certificate cannot be authenticated
    [rec] = proxy.wait_for_records(1)
    assert rec.result == TCP_TUNNEL and rec.notes.get("fwproxy.tls") == "rejected"


def test_splice_by_rule_keeps_the_origins_certificate(
    fwproxy: Any, tls_origin: Any, ca_dir: Path, origin_ca_file: Path
) -> None:
    rules = '"splice splice_names", "bump all"'
    proxy = fwproxy(config(tls_origin.port, ca_dir, origin_ca_file, rules), resolver=RESOLVER)
    # spliced: the client sees the origin's own certificate, so it must trust the origin's CA
    out = curl(proxy, f"https://splice.test:{tls_origin.port}/bytes/4", origin_ca_file)
    assert out.returncode == 0, out.stderr
    assert out.stdout == pattern(4)
    [rec] = proxy.wait_for_records(1)
    assert rec.result == TCP_TUNNEL and "fwproxy.tls" not in rec.notes


def test_ssl_sni_rule_decides(
    fwproxy: Any, tls_origin: Any, ca_dir: Path, origin_ca_file: Path
) -> None:
    proxy = fwproxy(
        config(tls_origin.port, ca_dir, origin_ca_file, '"bump bump_names"'), resolver=RESOLVER
    )
    bumped = curl(proxy, f"https://bump.test:{tls_origin.port}/bytes/1", ca_dir / "ca.pem")
    spliced = curl(proxy, f"https://splice.test:{tls_origin.port}/bytes/1", origin_ca_file)
    assert bumped.returncode == 0 and spliced.returncode == 0, (bumped.stderr, spliced.stderr)
    recs = proxy.wait_for_records(3)
    tunnels = [r for r in recs if r.method == "CONNECT"]
    assert [r.notes.get("fwproxy.tls") for r in tunnels] == ["bumped", None]


def test_url_regex_sees_https_urls_inside(
    fwproxy: Any, tls_origin: Any, ca_dir: Path, origin_ca_file: Path
) -> None:
    access = '"deny secret", "allow localhost"'
    proxy = fwproxy(
        config(tls_origin.port, ca_dir, origin_ca_file, access=access), resolver=RESOLVER
    )
    base = f"https://bump.test:{tls_origin.port}"
    out = curl(
        proxy, f"{base}/secret/1", ca_dir / "ca.pem", "-w", "%{http_code}", "-o", "/dev/null"
    )
    assert out.stdout == b"403", out.stderr


def test_an_unverified_origin_gets_fwproxys_502_inside(
    fwproxy: Any, tls_origin: Any, ca_dir: Path
) -> None:
    # no [tls] ca_file: the origin's CA is not trusted by the proxy
    proxy = fwproxy(config(tls_origin.port, ca_dir, None), resolver=RESOLVER)
    tls_origin.clear()
    out = curl(proxy, f"https://bump.test:{tls_origin.port}/bytes/9", ca_dir / "ca.pem", "-i")
    assert out.returncode == 0, out.stderr
    # curl shows the proxy's 200 to the CONNECT, then the answer from inside the tunnel
    assert b"\r\n\r\nHTTP/1.1 502 Bad Gateway\r\n" in out.stdout
    assert b"certificate verify failed" in out.stdout
    assert pattern(9) not in out.stdout
    assert tls_origin.snapshot() == []  # no request reached the unverified origin


def _tunnel(proxy: Any, authority: str, ca_pem: Path, sni: str) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 200 "), head
    ctx = ssl.create_default_context(cafile=str(ca_pem))
    return ctx.wrap_socket(sock, server_hostname=sni)


def _read_response(sock: ssl.SSLSocket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_another_host_inside_the_tunnel_is_misdirected(
    fwproxy: Any, tls_origin: Any, ca_dir: Path, origin_ca_file: Path
) -> None:
    proxy = fwproxy(config(tls_origin.port, ca_dir, origin_ca_file), resolver=RESOLVER)
    authority = f"bump.test:{tls_origin.port}"
    with _tunnel(proxy, authority, ca_dir / "ca.pem", "bump.test") as s:
        s.sendall(f"GET /bytes/1 HTTP/1.1\r\nHost: splice.test:{tls_origin.port}\r\n\r\n".encode())
        answer = _read_response(s)
        assert answer.startswith(b"HTTP/1.1 421 "), answer
        s.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        answer = _read_response(s)
        assert answer.startswith(b"HTTP/1.1 405 "), answer


def test_twistd_fwproxy_bumps_and_logs_both_lines(
    proxy: Any, tls_origin: Any, ca_dir: Path, origin_ca_file: Path, run_curl: Any
) -> None:
    """The real ``twistd -n fwproxy`` (as operators and the benchmark run it), the access log
    file in Squid's format: the request's line and the tunnel's."""
    extra = f"""
[tunnel]
peek_ports = [{tls_origin.port}]
[intercept]
ca = "{ca_dir}"
rules = ["bump all"]
[tls]
ca_file = "{origin_ca_file}"
"""
    running_proxy = proxy.start_with(tunnel_ports=(tls_origin.port,), extra=extra)
    url = f"https://localhost:{tls_origin.port}/bytes/50"
    r = run_curl("--proxy", running_proxy.url, "--cacert", str(ca_dir / "ca.pem"), url)
    assert r.status == 200, r.stderr
    assert r.body == pattern(50)
    request_line, tunnel_line = running_proxy.access_lines(2)[-2:]
    assert " TCP_MISS/200 " in request_line and f" GET {url} " in request_line
    assert " TCP_TUNNEL/200 " in tunnel_line and f" CONNECT localhost:{tls_origin.port} " in (
        tunnel_line
    )
    assert tunnel_line.endswith(" sni=localhost tls=bumped")
    # a client that does not trust the CA (it trusts the origin's only, as a pinning client
    # would): curl fails, the proxy logs one line naming the client, the host and the alert
    r = run_curl("--proxy", running_proxy.url, "--cacert", str(origin_ca_file), url)
    assert r.returncode == 60, r.stderr
    rejected = running_proxy.access_lines(3)[-1]
    assert rejected.endswith(" sni=localhost tls=rejected"), rejected
    wait_until(lambda: "rejected fwproxy's certificate" in running_proxy.output(), 5)
    [line] = [x for x in running_proxy.output().splitlines() if "rejected fwproxy's" in x]
    assert "from 127.0.0.1:" in line and "to localhost" in line and "alert unknown ca" in line


def test_a_connect_to_an_ip_address_is_verified_against_the_server_name(
    fwproxy: Any, tls_origin: Any, ca_dir: Path, origin_ca_file: Path
) -> None:
    # the origin's certificate names bump.test, not 127.0.0.1: the client's server name decides
    proxy = fwproxy(config(tls_origin.port, ca_dir, origin_ca_file), resolver=RESOLVER)
    tls_origin.clear()
    with _tunnel(proxy, f"127.0.0.1:{tls_origin.port}", ca_dir / "ca.pem", "bump.test") as s:
        host = f"bump.test:{tls_origin.port}"
        s.sendall(f"GET /bytes/4 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        answer = _read_response(s)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert tls_origin.server_names[-1] == "bump.test"
    inner = proxy.wait_for_records(2)[0]
    assert inner.target == f"https://bump.test:{tls_origin.port}/bytes/4"


def test_sigterm_closes_an_idle_bumped_connection_at_once(
    proxy: Any, tls_origin: Any, ca_dir: Path, origin_ca_file: Path
) -> None:
    """The real ``twistd -n fwproxy``: on SIGTERM an intercepted keep-alive connection between
    two requests is closed at once (not cut at ``timeouts.drain``, 25 s), and the process exits
    0."""
    extra = f"""
[tunnel]
peek_ports = [{tls_origin.port}]
[intercept]
ca = "{ca_dir}"
rules = ["bump all"]
[tls]
ca_file = "{origin_ca_file}"
"""
    running_proxy = proxy.start_with(tunnel_ports=(tls_origin.port,), extra=extra)
    authority = f"localhost:{tls_origin.port}"
    with _tunnel(running_proxy, authority, ca_dir / "ca.pem", "localhost") as s:
        s.sendall(f"GET /bytes/4 HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        answer = _read_response(s)
        while not answer.endswith(pattern(4)):
            answer += s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        started = time.monotonic()
        running_proxy.signal(signal.SIGTERM)
        s.settimeout(10)
        assert s.recv(65536) == b""  # the proxy's close_notify, long before the drain's end
        assert time.monotonic() - started < 5
    assert running_proxy.wait_exit(10) == 0, running_proxy.output()
