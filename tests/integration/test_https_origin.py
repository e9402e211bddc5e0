"""``GET https://`` in absolute form through a real ``twistd -n fwproxy``, relayed over TLS the
proxy originates and verifies, to a Python TLS origin on 127.0.0.1 with a CA and certificate
made here; clients are real curl (``--request-target`` sends the absolute-form ``https://``
target that curl itself would only ever tunnel) and raw sockets.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from fwp_origin import pattern
from fwp_support import toml_str
from support.certs import CA, TLSOriginServer
from support.servers import running


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA("fwproxy e2e CA")


@pytest.fixture(scope="module")
def tls_origin(ca: CA, tmp_path_factory: pytest.TempPathFactory):
    """A TLS origin for the name ``localhost`` (not for 127.0.0.1), signed by ``ca``."""
    with running(TLSOriginServer(ca.issue("localhost"), tmp_path_factory.mktemp("o"))) as s:
        yield s


@pytest.fixture
def trusting(proxy, ca: CA, tmp_path: Path):
    """A proxy whose upstream trust store is ``ca`` (``[tls] ca_file``)."""
    ca_file = ca.write(tmp_path, "upstream-ca")
    return proxy.start_with(extra=f"[tls]\nca_file = {toml_str(str(ca_file))}\n")


def raw_get(proxy, target: str, host: str, count: int = 1) -> list[bytes]:
    """Send ``count`` ``GET target`` requests on one connection; the responses, each read to
    the end of its Content-Length body."""
    out = []
    with socket.create_connection(proxy.address, timeout=10) as s:
        f = s.makefile("rb")
        for _ in range(count):
            s.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = f.readline()
                assert line, f"connection closed after {head!r}"
                head += line
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            out.append(head + f.read(length))
    return out


def test_curl_get_https_absolute_form_is_relayed_verified(
    trusting, tls_origin: TLSOriginServer, run_curl
) -> None:
    url = f"https://localhost:{tls_origin.port}/bytes/5000"
    r = run_curl(
        "--proxy", trusting.url, "--request-target", url, f"http://localhost:{tls_origin.port}/"
    )
    assert r.status == 200, r.stderr
    assert r.body == pattern(5000)
    rec = tls_origin.last()
    assert rec.request_line == b"GET /bytes/5000 HTTP/1.1"
    assert rec.headers("Host") == [f"localhost:{tls_origin.port}".encode()]
    assert "localhost" in tls_origin.server_names
    line = trusting.access_lines(1)[-1]
    assert " TCP_MISS/200 " in line and f" {url} " in line
    assert "HIER_DIRECT/127.0.0.1 " in line


def test_one_tls_connection_serves_several_requests(trusting, tls_origin: TLSOriginServer) -> None:
    tls_origin.clear()
    url = f"https://localhost:{tls_origin.port}/bytes/100"
    responses = raw_get(trusting, url, f"localhost:{tls_origin.port}", count=3)
    assert all(r.startswith(b"HTTP/1.1 200 ") and r.endswith(pattern(100)) for r in responses)
    assert len({rec.conn for rec in tls_origin.wait_requests(3)}) == 1


def test_hostname_mismatch_is_502_naming_it(trusting, tls_origin: TLSOriginServer) -> None:
    tls_origin.clear()
    url = f"https://127.0.0.1:{tls_origin.port}/"  # the certificate names localhost only
    [response] = raw_get(trusting, url, f"127.0.0.1:{tls_origin.port}")
    assert response.startswith(b"HTTP/1.1 502 ")
    reason = (
        "certificate verify failed: hostname mismatch: the certificate is for localhost, "
        "not 127.0.0.1"
    )
    assert reason.encode() in response
    assert tls_origin.snapshot() == []  # not a byte of the request went in the clear
    assert " TCP_MISS/502 " in trusting.access_lines(1)[-1]
    trusting.wait_output(f"TLS to 127.0.0.1:{tls_origin.port} failed .*hostname mismatch")
    trusting.assert_clean_log()


def test_unknown_ca_is_502_naming_it(proxy, tls_origin: TLSOriginServer, tmp_path: Path) -> None:
    other = CA("another CA").write(tmp_path, "other-ca")
    p = proxy.start_with(extra=f"[tls]\nca_file = {toml_str(str(other))}\n")
    [response] = raw_get(p, f"https://localhost:{tls_origin.port}/", "localhost")
    assert response.startswith(b"HTTP/1.1 502 ")
    assert b"certificate verify failed: unable to get local issuer certificate" in response
    assert " TCP_MISS/502 " in p.access_lines(1)[-1]
    p.assert_clean_log()


def test_system_trust_store_by_default(proxy, tls_origin: TLSOriginServer) -> None:
    p = proxy.start_with()
    [response] = raw_get(p, f"https://localhost:{tls_origin.port}/", "localhost")
    assert response.startswith(b"HTTP/1.1 502 ")
    assert b"unable to get local issuer certificate" in response
    assert b"the system trust store" in response


def test_http_to_the_tls_port_is_not_upgraded_nor_mixed(
    trusting, tls_origin: TLSOriginServer
) -> None:
    authority = f"localhost:{tls_origin.port}"
    errors = len(tls_origin.handshake_errors)
    [plain] = raw_get(trusting, f"http://{authority}/", authority)
    assert plain.startswith(b"HTTP/1.1 502 ")  # plain HTTP to a TLS server: it fails, visibly
    assert len(tls_origin.handshake_errors) == errors + 1
    [secure] = raw_get(trusting, f"https://{authority}/", authority)
    assert secure.startswith(b"HTTP/1.1 200 ")
