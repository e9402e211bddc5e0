"""HTTPS *to* the proxy: a real ``twistd -n fwproxy`` with an ``ssl:`` listener, on loopback,
tried with every client that speaks to HTTPS proxies.

curl ``--proxy https://`` to an ``http://`` URL (relayed) and to an ``https://`` URL (CONNECT
inside TLS: TLS in TLS, to a local TLS origin); ``openssl s_client -alpn`` (the regression: any
client offering ALPN used to get ``tlsv1 alert internal error``); Python ``requests`` and
``httpx`` with an ``https://`` proxy URL. Handshake failures are logged with the client and the
reason; SIGHUP re-reads the certificate for new connections while an established one goes on;
client certificates (``--proxy-cert``) are asked for, matched by a ``client_cert`` ACL and
logged as the user. Every certificate is made in the test by ``trustme``.
"""

from __future__ import annotations

import http.server
import re
import signal
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fwp_origin import pattern, sha
from fwp_support import free_port, proxy_config

trustme = pytest.importorskip("trustme")

#: the proxy's log line for a failed handshake
HANDSHAKE_FAILED = r"fwproxy: TLS handshake with 127\.0\.0\.1:\d+ failed: "


class Certs:
    """One CA for the proxy and the TLS origin, another for client certificates."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = trustme.CA()
        self.ca_file = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.proxy_key = directory / "proxy.pem"
        self.issue_proxy("fwproxy test proxy")
        self.origin = self.ca.issue_cert("127.0.0.1", "localhost", common_name="origin")
        self.clients = trustme.CA()
        self.client_ca_file = directory / "clients-ca.pem"
        self.clients.cert_pem.write_to_path(str(self.client_ca_file))

    def issue_proxy(self, common_name: str) -> None:
        cert = self.ca.issue_cert("127.0.0.1", "localhost", common_name=common_name)
        cert.private_key_and_cert_chain_pem.write_to_path(str(self.proxy_key))

    def client(self, name: str, common_name: str) -> tuple[Path, Path]:
        """A client certificate and its key, as curl's --proxy-cert and --proxy-key take them."""
        cert = self.clients.issue_cert(name, common_name=common_name)
        cert_path, key_path = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        cert.cert_chain_pems[0].write_to_path(str(cert_path))
        cert.private_key_pem.write_to_path(str(key_path))
        return cert_path, key_path

    def context(self) -> ssl.SSLContext:
        """A client context trusting the proxy and the origin."""
        return ssl.create_default_context(cafile=str(self.ca_file))


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return Certs(tmp_path)


class _Bytes(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        n = int(self.path.rsplit("/", 1)[-1])
        self.send_response(200)
        self.send_header("Content-Length", str(n))
        self.end_headers()
        self.wfile.write(pattern(n))

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def tls_origin(certs: Certs) -> Iterator[str]:
    """An HTTPS origin on 127.0.0.1 (``/bytes/N``); yields its ``https://127.0.0.1:PORT``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Bytes)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with certs.origin.private_key_and_cert_chain_pem.tempfile() as pem:
        context.load_cert_chain(pem)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(10)


def start_tls_proxy(proxy: Any, certs: Certs, extra: str = "", rules: str = "", **kw: Any) -> Any:
    """A proxy with one ``ssl:`` listener on a free port, logging access to a file."""
    port = free_port()
    log = certs.dir / f"access-{port}.log"
    listen = f"ssl:{port}:interface=127.0.0.1:privateKey={certs.proxy_key}"
    config = proxy_config([listen], access_log=log, extra=extra, **kw)
    if rules:
        config = re.sub(r"rules = \[\n.*?\n\]", rules, config, flags=re.S)
    return proxy.start(config, port=port, access_log=log)


def https_url(p: Any) -> str:
    """The proxy URL a client is given for the ``ssl:`` listener."""
    return f"https://127.0.0.1:{p.port}"


def tunnel_port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# -- every client ------------------------------------------------------------------------------


def test_curl_relays_http_through_an_https_proxy(proxy, certs, origin, run_curl):
    p = start_tls_proxy(proxy, certs)
    r = run_curl(
        "--proxy", https_url(p), "--proxy-cacert", str(certs.ca_file), f"{origin.url}/bytes/5000"
    )
    assert r.returncode == 0, r.stderr
    assert r.status == 200 and sha(r.body) == sha(pattern(5000))
    assert " TCP_MISS/200 " in p.access_line_for(f"GET {origin.url}/bytes/5000")
    p.assert_clean_log()


def test_curl_https_through_an_https_proxy_is_tls_in_tls(proxy, certs, tls_origin, run_curl):
    p = start_tls_proxy(proxy, certs, tunnel_ports=(tunnel_port(tls_origin),))
    n = 300_000
    r = run_curl(
        "-v",
        "--proxy",
        https_url(p),
        "--proxy-cacert",
        str(certs.ca_file),
        "--cacert",
        str(certs.ca_file),
        f"{tls_origin}/bytes/{n}",
    )
    assert r.returncode == 0, r.stderr
    assert r.status == 200 and r.connect_status == 200
    assert sha(r.body) == sha(pattern(n))
    authority = tls_origin.removeprefix("https://")
    assert " TCP_TUNNEL/200 " in p.access_line_for(f"CONNECT {authority}")
    p.assert_clean_log()


def s_client(port: int, alpn: str, request: bytes, certs: Certs) -> str:
    proc = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-alpn", alpn, "-ign_eof"]
        + ["-CAfile", str(certs.ca_file), "-verify_return_error"],
        input=request,
        capture_output=True,
        timeout=30,
        check=False,
    )
    return proc.stdout.decode("latin-1") + proc.stderr.decode("latin-1")


def test_openssl_s_client_offering_alpn_gets_http_1_1(proxy, certs, origin):
    """The regression from the issue: ``openssl s_client -alpn http/1.1`` used to get
    ``tlsv1 alert internal error`` (Twisted's TLS wrapper refuses ALPN for a factory that
    declares no protocols)."""
    p = start_tls_proxy(proxy, certs)
    request = f"GET {origin.url}/bytes/10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    out = s_client(p.port, "http/1.1", request.encode(), certs)
    assert "alert" not in out, out
    assert "ALPN protocol: http/1.1" in out
    assert "HTTP/1.1 200 OK" in out and pattern(10).decode("latin-1") in out
    # a client offering only protocols fwproxy does not speak gets no ALPN answer, no alert
    out = s_client(p.port, "h2", request.encode(), certs)
    assert "alert" not in out, out
    assert "No ALPN negotiated" in out and "HTTP/1.1 200 OK" in out
    p.assert_clean_log()


# requests leaves an https proxy's certificate unverified for an http:// URL, and warns
@pytest.mark.filterwarnings("ignore:Unverified HTTPS request")
def test_requests_with_an_https_proxy_url(proxy, certs, origin, tls_origin):
    requests = pytest.importorskip("requests")
    p = start_tls_proxy(proxy, certs, tunnel_ports=(tunnel_port(tls_origin),))
    session = requests.Session()
    session.trust_env = False
    proxies = {"http": https_url(p), "https": https_url(p)}
    for url in (f"{origin.url}/bytes/1000", f"{tls_origin}/bytes/70000"):
        r = session.get(url, proxies=proxies, verify=str(certs.ca_file), timeout=20)
        assert r.status_code == 200, url
        assert sha(r.content) == sha(pattern(int(url.rsplit("/", 1)[1])))
    p.assert_clean_log()


def test_httpx_with_an_https_proxy_url(proxy, certs, origin, tls_origin):
    httpx = pytest.importorskip("httpx")
    p = start_tls_proxy(proxy, certs, tunnel_ports=(tunnel_port(tls_origin),))
    context = certs.context()
    via = httpx.Proxy(https_url(p), ssl_context=context)
    with httpx.Client(proxy=via, verify=context, trust_env=False, timeout=20) as client:
        for url in (f"{origin.url}/bytes/1000", f"{tls_origin}/bytes/70000"):
            r = client.get(url)
            assert r.status_code == 200, url
            assert sha(r.content) == sha(pattern(int(url.rsplit("/", 1)[1])))
    p.assert_clean_log()


# -- handshake failures ----------------------------------------------------------------------


def test_a_client_that_does_not_trust_the_proxy_is_logged(proxy, certs, origin, run_curl):
    p = start_tls_proxy(proxy, certs)
    r = run_curl("--proxy", https_url(p), f"{origin.url}/bytes/1")  # no --proxy-cacert
    assert r.returncode != 0 and r.status == 0
    line = p.wait_output(HANDSHAKE_FAILED + r".*")
    assert "(the client does not trust the proxy's certificate)" in line
    p.assert_clean_log()


def test_plain_http_on_the_tls_port_is_logged(proxy, certs, origin, run_curl):
    p = start_tls_proxy(proxy, certs)
    r = run_curl("--proxy", f"http://127.0.0.1:{p.port}", f"{origin.url}/bytes/1")
    assert r.status == 0
    line = p.wait_output(HANDSHAKE_FAILED + r".*")
    assert "http request (plain HTTP on the TLS port" in line
    assert origin.snapshot() == []
    p.assert_clean_log()


# -- SIGHUP ----------------------------------------------------------------------------------


def get_on(conn: ssl.SSLSocket, url: str) -> bytes:
    """One keep-alive request on ``conn``; the whole response."""
    conn.sendall(f"GET {url} HTTP/1.1\r\nHost: origin\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    n = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])  # type: ignore[index]
    while len(body) < n:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


def connect(certs: Certs, port: int) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return certs.context().wrap_socket(raw, server_hostname="127.0.0.1")


def common_name(conn: ssl.SSLSocket) -> str:
    subject = dict(x[0] for x in conn.getpeercert()["subject"])  # type: ignore[index]
    return str(subject["commonName"])


def test_sighup_rereads_the_certificate_for_new_connections_only(proxy, certs, origin):
    p = start_tls_proxy(proxy, certs)
    url = f"{origin.url}/bytes/100"
    with connect(certs, p.port) as early:
        assert get_on(early, url).startswith(b"HTTP/1.1 200 ")
        assert common_name(early) == "fwproxy test proxy"
        certs.issue_proxy("fwproxy renewed")
        mark = len(p.output())
        p.signal(signal.SIGHUP)
        p.wait_output(r"TLS key and certificate re-read \(CN=fwproxy renewed, expires ", after=mark)
        with connect(certs, p.port) as late:
            assert common_name(late) == "fwproxy renewed"
            assert get_on(late, url).startswith(b"HTTP/1.1 200 ")
        # the connection made before the reload goes on, with the certificate it started with
        assert get_on(early, url).startswith(b"HTTP/1.1 200 ")
        assert common_name(early) == "fwproxy test proxy"
    p.assert_clean_log()


def test_sighup_with_a_broken_key_keeps_the_running_certificate(proxy, certs, origin):
    p = start_tls_proxy(proxy, certs)
    certs.proxy_key.write_text("truncated\n")
    mark = len(p.output())
    p.signal(signal.SIGHUP)
    p.wait_output(r"new configuration rejected.*\n.*no PEM private key in it", after=mark)
    with connect(certs, p.port) as conn:
        assert common_name(conn) == "fwproxy test proxy"
        assert get_on(conn, f"{origin.url}/bytes/3").startswith(b"HTTP/1.1 200 ")
    p.assert_clean_log()


# -- client certificates ---------------------------------------------------------------------

TEAM_RULES = """rules = [
  "deny to_linklocal",
  "allow clients team",
  "deny all",
]
[acl.team]
client_cert = [".clients.test"]"""


def client_cert_proxy(proxy: Any, certs: Certs, mode: str) -> Any:
    tls = f"[tls]\nclient_ca_file = '{certs.client_ca_file}'\nclient_cert = '{mode}'\n"
    return start_tls_proxy(proxy, certs, extra=tls, rules=TEAM_RULES)


def user_of(line: str) -> str:
    """The user field of a squid-format access log line."""
    return line.split()[7]


def test_an_optional_client_certificate_is_matched_and_logged(proxy, certs, origin, run_curl):
    p = client_cert_proxy(proxy, certs, "optional")
    cert, key = certs.client("alice.clients.test", "alice")
    base = ("--proxy", https_url(p), "--proxy-cacert", str(certs.ca_file))
    r = run_curl(*base, "--proxy-cert", str(cert), "--proxy-key", str(key), f"{origin.url}/bytes/7")
    assert r.returncode == 0, r.stderr
    assert r.status == 200
    line = p.access_line_for(f"{origin.url}/bytes/7")
    assert " TCP_MISS/200 " in line and user_of(line) == "alice"
    r = run_curl(*base, f"{origin.url}/bytes/8")  # no certificate: served, and denied
    assert r.status == 403
    line = p.access_line_for(f"{origin.url}/bytes/8")
    assert " TCP_DENIED/403 " in line and user_of(line) == "-"
    cert, key = certs.client("mallory.elsewhere.test", "mallory")
    r = run_curl(*base, "--proxy-cert", str(cert), "--proxy-key", str(key), f"{origin.url}/bytes/9")
    assert r.status == 403
    assert user_of(p.access_line_for(f"{origin.url}/bytes/9")) == "mallory"
    p.assert_clean_log()


def test_a_required_client_certificate_fails_the_handshake_without_one(
    proxy, certs, origin, run_curl
):
    p = client_cert_proxy(proxy, certs, "required")
    base = ("--proxy", https_url(p), "--proxy-cacert", str(certs.ca_file))
    r = run_curl(*base, f"{origin.url}/bytes/1")
    assert r.returncode != 0 and r.status == 0
    line = p.wait_output(HANDSHAKE_FAILED + r".*")
    assert 'peer did not return a certificate (client_cert = "required"' in line
    cert, key = certs.client("bob.clients.test", "bob")
    r = run_curl(*base, "--proxy-cert", str(cert), "--proxy-key", str(key), f"{origin.url}/bytes/2")
    assert r.returncode == 0, r.stderr
    assert r.status == 200
    assert user_of(p.access_line_for(f"{origin.url}/bytes/2")) == "bob"
    stranger = trustme.CA().issue_cert("eve.clients.test", common_name="eve")
    eve_cert, eve_key = certs.dir / "eve.crt", certs.dir / "eve.key"
    stranger.cert_chain_pems[0].write_to_path(str(eve_cert))
    stranger.private_key_pem.write_to_path(str(eve_key))
    mark = len(p.output())
    r = run_curl(*base, "--proxy-cert", str(eve_cert), "--proxy-key", str(eve_key), origin.url)
    assert r.status == 0
    line = p.wait_output(HANDSHAKE_FAILED + r".*", after=mark)
    assert "certificate verify failed: the client certificate: unable to get local issuer" in line
    p.assert_clean_log()
