"""Result codes of CONNECT (and, beside them, GET) with real clients through a real ``twistd -n
fwproxy`` over loopback sockets.

An established tunnel is logged ``TCP_TUNNEL/200`` however it ends, as Squid logs it
(src/tunnel.cc never marks a tunnel aborted): here with Python's ``urllib.request`` fetching
HTTPS from a Python TLS origin (``http.server`` wrapped with ``ssl``) and closing the response
with the body unread — the case that used to be logged ``TCP_TUNNEL_ABORTED/200``: the client's
kernel answers a close with unread bytes with RST instead of FIN — and with raw sockets for a
client reset and an origin reset. A failed or refused CONNECT names the same handling path:
``TCP_TUNNEL/502`` beside a GET's ``TCP_MISS/502``; a denial is ``TCP_DENIED/403`` for both.
"""

from __future__ import annotations

import datetime
import fcntl
import http.server
import ipaddress
import select
import socket
import ssl
import struct
import termios
import threading
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fwp_origin import pattern, sha
from fwp_support import free_port, source_address_available, wait_until

RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


# -- a Python TLS origin ------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (and its key), valid for a day either side of now."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fwproxy test origin")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "origin-cert.pem", directory / "origin-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class _BytesHandler(http.server.BaseHTTPRequestHandler):
    """``GET /bytes/N``: N deterministic bytes with Content-Length (HTTP/1.0: then it closes)."""

    def do_GET(self) -> None:
        n = int(self.path.rsplit("/", 1)[-1])
        body = pattern(n)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(n))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class TLSOrigin:
    """``http.server`` with its listening socket wrapped by ``ssl``, on 127.0.0.1."""

    def __init__(self, directory: Path) -> None:
        self.cert, key = self_signed(directory)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BytesHandler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.authority = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"https://{self.authority}{path}"

    def client_context(self) -> ssl.SSLContext:
        """What a client trusting this origin's certificate uses."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(self.cert)
        return context

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)


@pytest.fixture(scope="module")
def tls_origin(tmp_path_factory: pytest.TempPathFactory):
    origin = TLSOrigin(tmp_path_factory.mktemp("tls-origin"))
    origin.start()
    yield origin
    origin.stop()


@pytest.fixture(autouse=True)
def _no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    # urllib honours no_proxy even with an explicit ProxyHandler: make sure the proxy is used
    for name in ("no_proxy", "NO_PROXY", "https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)


def urllib_via(proxy_url: str, origin: TLSOrigin) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({"https": proxy_url, "http": proxy_url}),
        urllib.request.HTTPSHandler(context=origin.client_context()),
    )


def unread(fd: int) -> int:
    """Bytes waiting in a socket's receive buffer."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def peer_shut_down(fd: int) -> bool:
    """Whether the peer's FIN has arrived (everything it sent before it is in the buffer)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLRDHUP)
    return any(events & select.POLLRDHUP for _, events in poller.poll(0))


def code_of(line: str) -> str:
    """``TCP_TUNNEL/200`` of a squid-format access log line."""
    return line.split()[3]


# -- an established tunnel ---------------------------------------------------------------------


def test_urllib_https_read_to_the_end_is_tcp_tunnel(proxy, tls_origin):
    p = proxy.start_with(tunnel_ports=(tls_origin.port,))
    n = 100_000
    with urllib_via(p.url, tls_origin).open(tls_origin.url(f"/bytes/{n}"), timeout=10) as r:
        assert r.status == 200
        assert sha(r.read()) == sha(pattern(n))
    assert code_of(p.access_line_for(f"CONNECT {tls_origin.authority}")) == "TCP_TUNNEL/200"
    p.assert_clean_log()


def test_urllib_https_closed_with_the_body_unread_is_tcp_tunnel(proxy, tls_origin):
    """The report: urllib, the caller looks at the status and closes the response. The origin
    has sent head and body (separate TLS records) and closed (FIN); the proxy passes the FIN on;
    the client closes its socket with the body still in its receive buffer, so its kernel sends
    RST instead of FIN and the proxy never reads an EOF from the client. The fetch succeeded
    and the tunnel did its job: TCP_TUNNEL/200, not TCP_TUNNEL_ABORTED/200."""
    p = proxy.start_with(tunnel_ports=(tls_origin.port,))
    n = 64 * 1024
    with urllib_via(p.url, tls_origin).open(tls_origin.url(f"/bytes/{n}"), timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == str(n)
        # as recorded at the proxy: the origin's FIN has been passed on (so the proxy has nothing
        # more to write to this client), and body bytes sit unread here: the close is a reset
        fd = r.fileno()
        wait_until(lambda: peer_shut_down(fd) and unread(fd) > 0, 5, "the body and FIN, unread")
    line = p.access_line_for(f"CONNECT {tls_origin.authority}")
    assert code_of(line) == "TCP_TUNNEL/200", line
    p.assert_clean_log()


def _open_tunnel(proxy_address: tuple[str, int], authority: str, **kw) -> socket.socket:
    s = socket.create_connection(proxy_address, timeout=10, **kw)
    s.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = s.recv(1)
        assert byte, f"the proxy closed after {head!r}"
        head += byte
    assert head.split(b" ")[1] == b"200", head
    return s


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = s.recv(n - len(got))
        assert chunk, f"EOF after {got!r}"
        got += chunk
    return got


def test_client_reset_in_a_tunnel_is_tcp_tunnel(proxy, echo):
    p = proxy.start_with(tunnel_ports=(echo.port,))
    s = _open_tunnel(p.address, echo.authority)
    s.sendall(b"ping")
    assert _recv_exactly(s, 4) == b"ping"
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
    s.close()
    line = p.access_line_for(f"CONNECT {echo.authority}")
    assert code_of(line) == "TCP_TUNNEL/200", line
    p.assert_clean_log()


class _ResettingOrigin:
    """Accepts one connection, sends ``bye`` and half-closes; resets it when told to."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.authority = f"127.0.0.1:{self.port}"
        self.reset = threading.Event()
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(10)
        try:
            conn, _ = self.listener.accept()
            conn.sendall(b"bye")
            conn.shutdown(socket.SHUT_WR)
            self.reset.wait(10)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
            conn.close()
        finally:
            self.listener.close()
            self.done.set()


def test_origin_reset_after_its_fin_is_tcp_tunnel(proxy):
    """The origin half-closes, the proxy passes it on; then the origin resets and the client
    sends more. Writing upstream fails; Twisted tells the client's transport (the upstream's
    producer, its write side already shut) to stop, which drops the client connection before
    the tunnel hears that the upstream is gone — the other way this was logged ABORTED."""
    origin = _ResettingOrigin()
    p = proxy.start_with(tunnel_ports=(origin.port,))
    s = _open_tunnel(p.address, origin.authority)
    try:
        assert _recv_exactly(s, 3) == b"bye"
        assert s.recv(1) == b""  # the origin's FIN, passed on
        origin.reset.set()
        assert origin.done.wait(10)
        access_log = p.access_log

        def logged() -> bool:
            try:
                s.sendall(b"after the origin left")
            except OSError:
                pass  # the proxy has closed: the line is on its way
            return access_log.exists() and origin.authority in access_log.read_text()

        wait_until(logged, 10, "the tunnel's access log line")
    finally:
        s.close()
    line = p.access_line_for(f"CONNECT {origin.authority}")
    assert code_of(line) == "TCP_TUNNEL/200", line
    p.assert_clean_log()


# -- failures and denials: GET and CONNECT side by side ---------------------------------------


def _status(proxy_address: tuple[str, int], head: str, source: str = "") -> int:
    kw = {"source_address": (source, 0)} if source else {}
    with socket.create_connection(proxy_address, timeout=10, **kw) as s:
        s.sendall(head.encode())
        line = s.makefile("rb").readline()
    assert line.startswith(b"HTTP/1.1 "), line
    return int(line.split(b" ")[1])


def test_refused_and_denied_codes_for_get_and_connect(proxy, tls_origin):
    closed = free_port()  # nobody listens there
    not_a_tunnel_port = free_port()
    p = proxy.start_with(tunnel_ports=(443, closed))
    target = f"127.0.0.1:{closed}"
    expected = {
        ("127.0.0.1", "GET", f"http://{target}/refused"): "TCP_MISS/502",
        ("127.0.0.1", "CONNECT", target): "TCP_TUNNEL/502",
        ("127.0.0.1", "CONNECT", f"127.0.0.1:{not_a_tunnel_port}"): "TCP_DENIED/403",
    }
    get_refused = f"GET http://{target}/refused HTTP/1.1\r\nHost: {target}\r\n\r\n"
    assert _status(p.address, get_refused) == 502
    # urllib's CONNECT to the refused port: the proxy's 502 ends the fetch
    with pytest.raises(OSError, match="Tunnel connection failed: 502"):
        urllib_via(p.url, tls_origin).open(f"https://{target}/", timeout=10)
    denied_port = f"127.0.0.1:{not_a_tunnel_port}"
    assert (
        _status(p.address, f"CONNECT {denied_port} HTTP/1.1\r\nHost: {denied_port}\r\n\r\n") == 403
    )
    if source_address_available("127.0.0.2"):  # not in [acl.clients]: denied
        get_denied = f"GET http://{target}/denied HTTP/1.1\r\nHost: {target}\r\n\r\n"
        assert _status(p.address, get_denied, "127.0.0.2") == 403
        connect = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"
        assert _status(p.address, connect, "127.0.0.2") == 403
        expected[("127.0.0.2", "GET", f"http://{target}/denied")] = "TCP_DENIED/403"
        expected[("127.0.0.2", "CONNECT", target)] = "TCP_DENIED/403"
    lines = p.access_lines(len(expected))
    got = {}
    for line in lines:
        f = line.split()
        got[(f[2], f[5], f[6])] = f[3]
    assert got == expected, lines
    p.assert_clean_log()
