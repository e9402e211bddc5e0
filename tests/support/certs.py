"""Certificates made for a test, and the server side of TLS for the in-memory tests.

:class:`CA` makes a certificate authority and the leaf certificates it signs (``cryptography``,
which pyOpenSSL depends on: nothing more to install), written as PEM files when asked; EC keys
(P-256), quick to make, so each test can have its own CA. :class:`MemoryTLSServer` is an
origin's (or a parent proxy's) TLS endpoint for a connection the proxy made in a
:class:`fwproxy.testing.Harness`: it pumps the handshake and records what arrives decrypted.
:func:`server_options` is the matching server context for Twisted; :class:`TLSOriginServer`
is :class:`support.servers.OriginServer` over TLS on a loopback port, for the end-to-end tests.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet import error as ierror
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

from fwproxy.testing import FakeTransport, Upstream, address
from support.servers import OriginServer


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class Leaf:
    """A certificate and its key, signed by a :class:`CA`."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _pem_key(self.key)

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """``(cert, key)`` PEM files in ``directory``."""
        cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        return cert, key


class CA:
    """A self-signed certificate authority."""

    def __init__(self, name: str = "fwproxy test CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, directory: Path, stem: str = "ca") -> Path:
        """The CA certificate as a PEM file in ``directory``."""
        path = directory / f"{stem}.crt"
        path.write_bytes(self.cert_pem)
        return path

    def issue(self, *names: str, days: int = 30, expired: bool = False) -> Leaf:
        """A server certificate for ``names`` (DNS names or IP literals; the first is also the
        common name). ``expired``: its validity ended yesterday."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        if expired:
            start, end = now - datetime.timedelta(days=10), now - datetime.timedelta(days=1)
        else:
            start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=days)
        alt: list[x509.GeneralName] = []
        for n in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alt.append(x509.DNSName(n))
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(names[0]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return Leaf(cert, key)


def server_options(leaf: Leaf, alpn: bool = True) -> CertificateOptions:
    """A server's TLS options with ``leaf``; ALPN ``http/1.1`` when ``alpn``."""
    return CertificateOptions(
        privateKey=leaf.key,  # type: ignore[arg-type]
        certificate=leaf.cert,  # type: ignore[arg-type]
        acceptableProtocols=[b"http/1.1"] if alpn else None,
    )


class _Recording(Protocol):
    def __init__(self) -> None:
        self.received = bytearray()

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class MemoryTLSServer:
    """The far end of an upstream connection the proxy made over TLS, in memory.

    ``up`` is the harness's :class:`Upstream` (its ``proto`` is the proxy's TLS wrapper): bytes
    the proxy wrote to it go to a server ``TLSMemoryBIOProtocol`` presenting ``leaf``, and what
    that one writes goes back, until neither has anything more to say (:meth:`pump`; ``clock``,
    the harness's, is advanced by 0 on the way: Twisted's TLS transports flush their writes on
    the next reactor turn). A connection the proxy closed is delivered as lost, as a reactor
    would.

    :ivar received: the application bytes the server decrypted.
    :ivar tls: the server's TLS protocol (``getHandle()`` is its OpenSSL connection).
    """

    def __init__(self, up: Upstream, leaf: Leaf, clock: Any, alpn: bool = True) -> None:
        self.up = up
        self.clock = clock
        self.app = _Recording()
        factory = Factory.forProtocol(lambda: self.app)
        self.tls: TLSMemoryBIOProtocol = TLSMemoryBIOFactory(
            server_options(leaf, alpn), False, factory, clock
        ).buildProtocol(address("127.0.0.1", up.port))
        self.transport = FakeTransport(address(up.host, up.port), address("10.9.0.1", 40000))
        self.tls.makeConnection(self.transport)
        self.pump()

    @property
    def received(self) -> bytes:
        return bytes(self.app.received)

    @property
    def server_name(self) -> bytes | None:
        """The SNI the proxy sent."""
        handle: SSL.Connection = self.tls.getHandle()
        return handle.get_servername()

    @property
    def alpn(self) -> bytes | None:
        """The protocol ALPN settled on (None: none)."""
        return self.tls.negotiatedProtocol

    def pump(self) -> None:
        for _ in range(100):
            self.clock.advance(0)
            moved = False
            data = self.up.take()
            if data and not self.transport.disconnecting:
                self.tls.dataReceived(data)
                moved = True
            data = self.transport.take()
            if data and not self.up.gone:
                self.up.send(data)
                moved = True
            if not moved:
                break
        if self.up.closed and not self.up.gone:
            self.up.lost(ierror.ConnectionDone)

    def send(self, data: bytes) -> None:
        """The server sends ``data`` (encrypted) to the proxy."""
        self.tls.write(data)
        self.pump()


class TLSOriginServer(OriginServer):
    """:class:`support.servers.OriginServer` over TLS (Python's ``ssl``), presenting ``leaf``:
    an ``https://`` origin on an ephemeral loopback port. ALPN ``http/1.1`` is accepted.

    :ivar server_names: the SNI of each handshake, in order (``None``: none sent).
    :ivar handshake_errors: why each failed handshake failed (the client refused the
        certificate, or spoke plain text).
    """

    def __init__(self, leaf: Leaf, directory: Path, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        cert, key = leaf.write(directory, f"origin-{id(self)}")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.set_alpn_protocols(["http/1.1"])
        self.server_names: list[str | None] = []
        self.handshake_errors: list[str] = []

        def named(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
            self.server_names.append(name)

        context.sni_callback = named  # type: ignore[assignment]
        plain = self._server
        outer = self

        def get_request() -> tuple[socket.socket, Any]:
            sock, addr = socket.socket.accept(plain.socket)
            tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            try:
                tls.settimeout(10)
                tls.do_handshake()
            except (OSError, ssl.SSLError) as e:
                outer.handshake_errors.append(str(e))
                tls.close()
                raise
            return tls, addr

        plain.get_request = get_request  # type: ignore[method-assign]

    @property
    def url(self) -> str:
        return f"https://{self.authority}"
