"""The server name of CONNECT tunnels checked end to end: real ``openssl s_client -proxy`` and
curl through real proxies on loopback, to a Python TLS origin with a certificate made here.

The in-process proxies (the ``fwproxy`` fixture) resolve the test's names to 127.0.0.1 and
peek on the origin's port; one ``twistd -n fwproxy`` process shows the access log line. Cases:
domain fronting (CONNECT an allowed name, present another) refused with a TLS alert; the same
name passed through; ``ssl_sni`` rules allowing and denying; non-TLS bytes refused; an Encrypted
Client Hello (crafted) allowed or denied by ``[tunnel] ech``.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fwp_support import REPO, child_env
from support.tlshello import crafted_hello

from fwproxy.record import TCP_DENIED, TCP_TUNNEL
from fwproxy.testing import FakeResolver

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
CURL = shutil.which("curl") or "/usr/bin/curl"
NAMES = ["allowed.test", "*.allowed.test", "other.test", "evil.test", "public.test"]
#: a fatal access_denied alert, as the proxy sends it
ALERT = b"\x15\x03\x03\x00\x02\x02\x31"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for :data:`NAMES` and 127.0.0.1, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fwproxy sni test origin")])
    now = datetime.datetime.now(datetime.UTC)
    alt = [x509.DNSName(n) for n in NAMES] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "origin.pem", directory / "origin.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class TlsOrigin:
    """A TLS server on 127.0.0.1 that answers any request with the server name it was asked
    for; :attr:`names` are the server names of the handshakes that reached it."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.sni_callback = self._sni
        self.names: list[str | None] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _sni(self, sock: Any, name: str | None, ctx: Any) -> None:
        self.names.append(name)
        sock.seen_name = name

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = tls.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                body = (getattr(tls, "seen_name", None) or "-").encode()
                tls.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                    % (len(body), body)
                )
        except (OSError, ssl.SSLError):
            pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("sni"))


@pytest.fixture
def tls_origin(certificate: tuple[Path, Path]) -> Iterator[TlsOrigin]:
    server = TlsOrigin(*certificate)
    yield server
    server.close()


def config(port: int, rules: str = '"allow localhost"', tunnel: str = "") -> str:
    return f"""
[acl.localhost]
src = ["127.0.0.0/8"]
[acl.sni_ok]
ssl_sni = [".allowed.test"]
[access]
rules = [{rules}]
[timeouts]
client_hello = 5
[tunnel]
peek_ports = [{port}]
{tunnel}
"""


RESOLVER = {n.replace("*", "www"): ["127.0.0.1"] for n in NAMES}


def s_client(proxy_port: int, connect: str, servername: str | None) -> tuple[int, str]:
    """``openssl s_client -proxy`` through the proxy; its exit code and output."""
    name = ["-servername", servername] if servername else ["-noservername"]
    args = [OPENSSL, "s_client", "-proxy", f"127.0.0.1:{proxy_port}", "-connect", connect]
    out = subprocess.run(
        [*args, *name, "-brief"],
        input=b"Q\n",
        capture_output=True,
        timeout=30,
    )
    return out.returncode, (out.stdout + out.stderr).decode("utf-8", "replace")


def raw_tunnel(proxy_port: int, authority: str) -> socket.socket:
    """A CONNECT tunnel opened by hand; the socket after the proxy's ``200``."""
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 200 "), head
    return sock


def read_all(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk


pytestmark = pytest.mark.skipif(not shutil.which("openssl"), reason="needs openssl")


def test_domain_fronting_is_refused(fwproxy: Any, tls_origin: TlsOrigin) -> None:
    proxy = fwproxy(config(tls_origin.port), resolver=FakeResolver(RESOLVER))
    code, out = s_client(proxy.port, f"allowed.test:{tls_origin.port}", "other.test")
    assert code != 0
    assert "access denied" in out, out
    [rec] = proxy.wait_for_records(1)
    assert (rec.result, rec.status, rec.sni) == (TCP_DENIED, 403, "other.test")
    assert rec.target == f"allowed.test:{tls_origin.port}"
    assert tls_origin.names == []  # no ClientHello reached the origin


def test_the_connect_host_as_server_name_passes(fwproxy: Any, tls_origin: TlsOrigin) -> None:
    proxy = fwproxy(config(tls_origin.port), resolver=FakeResolver(RESOLVER))
    code, out = s_client(proxy.port, f"allowed.test:{tls_origin.port}", "allowed.test")
    assert code == 0, out
    assert "CONNECTION ESTABLISHED" in out or "Protocol version" in out, out
    [rec] = proxy.wait_for_records(1)
    assert (rec.result, rec.status, rec.sni) == (TCP_TUNNEL, 200, "allowed.test")
    assert tls_origin.names == ["allowed.test"]


def test_a_mismatch_only_logged(fwproxy: Any, tls_origin: TlsOrigin) -> None:
    proxy = fwproxy(
        config(tls_origin.port, tunnel='sni_mismatch = "log"'), resolver=FakeResolver(RESOLVER)
    )
    code, out = s_client(proxy.port, f"allowed.test:{tls_origin.port}", "other.test")
    assert code == 0, out
    [rec] = proxy.wait_for_records(1)
    assert (rec.result, rec.sni) == (TCP_TUNNEL, "other.test")
    assert tls_origin.names == ["other.test"]


def test_curl_through_a_peeked_tunnel(
    fwproxy: Any, tls_origin: TlsOrigin, certificate: Any
) -> None:
    proxy = fwproxy(config(tls_origin.port), resolver=FakeResolver(RESOLVER))
    url = f"https://www.allowed.test:{tls_origin.port}/"
    common = [CURL, "-sS", "--noproxy", "", "--proxy", proxy.url, "--cacert", str(certificate[0])]
    out = subprocess.run([*common, url], capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"www.allowed.test"
    # curl fronting: CONNECT to allowed.test, server name (and Host) www.allowed.test
    fronted = [*common, "--connect-to", f"www.allowed.test:{tls_origin.port}:allowed.test:", url]
    out = subprocess.run(fronted, capture_output=True, timeout=30)
    assert out.returncode != 0
    recs = proxy.wait_for_records(2)
    assert [(r.target, r.result, r.sni) for r in recs] == [
        (f"www.allowed.test:{tls_origin.port}", TCP_TUNNEL, "www.allowed.test"),
        (f"allowed.test:{tls_origin.port}", TCP_DENIED, "www.allowed.test"),
    ]


@pytest.mark.parametrize(
    "servername, allowed",
    [("www.allowed.test", True), ("allowed.test", True), ("evil.test", False), (None, False)],
)
def test_ssl_sni_rules(
    fwproxy: Any, tls_origin: TlsOrigin, servername: str | None, allowed: bool
) -> None:
    rules = '"allow localhost sni_ok", "deny all"'
    proxy = fwproxy(config(tls_origin.port, rules), resolver=FakeResolver(RESOLVER))
    # an IP literal: no host name to mismatch, the ssl_sni rule alone decides
    code, out = s_client(proxy.port, f"127.0.0.1:{tls_origin.port}", servername)
    assert (code == 0) is allowed, out
    [rec] = proxy.wait_for_records(1)
    assert rec.result == (TCP_TUNNEL if allowed else TCP_DENIED)
    assert rec.sni == (servername or "")
    assert tls_origin.names == ([servername] if allowed else [])


def test_non_tls_bytes_are_refused(fwproxy: Any, tls_origin: TlsOrigin) -> None:
    proxy = fwproxy(config(tls_origin.port), resolver=FakeResolver(RESOLVER))
    with raw_tunnel(proxy.port, f"allowed.test:{tls_origin.port}") as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
        assert read_all(sock) == b""  # closed, with no alert: the client does not speak TLS
    [rec] = proxy.wait_for_records(1)
    assert (rec.result, rec.status, rec.sni) == (TCP_DENIED, 403, None)
    assert rec.notes["fwproxy.tunnel_denied"].startswith("not TLS")


@pytest.mark.parametrize("ech, allowed", [("allow", True), ("deny", False)])
def test_encrypted_client_hello(
    fwproxy: Any, tls_origin: TlsOrigin, ech: str, allowed: bool
) -> None:
    proxy = fwproxy(
        config(tls_origin.port, tunnel=f'ech = "{ech}"'), resolver=FakeResolver(RESOLVER)
    )
    hello = crafted_hello("public.test", [b"h2"], ech=True, grease=True)
    with raw_tunnel(proxy.port, f"allowed.test:{tls_origin.port}") as sock:
        sock.sendall(hello)
        answer = read_all(sock)
    [rec] = proxy.wait_for_records(1)
    assert rec.sni == "public.test" and rec.notes["fwproxy.ech"] is True
    if allowed:
        # passed on although the name is not the CONNECT host's; the origin, which cannot
        # complete this crafted hello, answers with its own alert
        assert rec.result == TCP_TUNNEL
        assert answer != ALERT
        assert tls_origin.names == ["public.test"]
    else:
        assert rec.result == TCP_DENIED
        assert answer == ALERT
        assert tls_origin.names == []


def test_the_access_log_of_a_twistd_proxy_names_the_server(
    proxy: Any, tls_origin: TlsOrigin
) -> None:
    extra = f"""
[acl.sni_ok]
ssl_sni = [".allowed.test"]
[tunnel]
peek_ports = [{tls_origin.port}]
"""
    p = proxy.start_with(tunnel_ports=[tls_origin.port], extra=extra)
    code, out = s_client(p.port, f"127.0.0.1:{tls_origin.port}", "evil.test")
    assert code == 0, out  # allowed by "allow clients": the rules have no ssl_sni rule
    line = p.access_line_for(f"127.0.0.1:{tls_origin.port}")
    assert line.split()[3] == "TCP_TUNNEL/200"
    assert line.endswith(" sni=evil.test"), line
    p.assert_clean_log()


def test_check_config_names_bad_tunnel_keys(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[tunnel]\npeek_ports = [443, 70000]\nsni_mismatch = "warn"\n')
    out = subprocess.run(
        [sys.executable, "-m", "fwproxy.cli", "check-config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(REPO),
        env=child_env(),
    )
    assert out.returncode != 0
    assert out.stderr.splitlines() == [
        f"{bad}:2: tunnel.peek_ports: 70000 is not a port (1-65535)",
        f'{bad}:3: tunnel.sni_mismatch: expected "deny" or "log" or "allow", got \'warn\'',
    ]
