# -*- test-case-name: tests.test_intercept -*-
"""The interception CA: ``fwproxy ca init DIR`` makes it, ``[intercept] ca = "DIR"`` loads it.

:func:`init` writes ``DIR/ca.pem`` (the certificate to install in clients' trust stores) and
``DIR/ca.key`` (its private key, mode 0600; ``DIR`` is made 0700 when missing) and refuses to
overwrite either. The key is EC P-256: a leaf certificate signed with it takes about 0.3 ms
against 1 ms with RSA-2048, and an ECDSA handshake costs the proxy a fraction of an RSA one.
The certificate is valid for 10 years, as mitmproxy's CA is (a CA is distributed once, by
hand, to every client: a short life would mean redistributing it), ``CA:TRUE, pathlen:0``
(it signs leaf certificates only) and ``keyCertSign``. :func:`load` reads a CA directory back
and checks it (readable, the key matches, a CA, valid now), raising :class:`CAError` with one
line.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CERT_FILE = "ca.pem"
KEY_FILE = "ca.key"
#: the CA certificate's validity (mitmproxy's: 10 years)
CA_VALIDITY = datetime.timedelta(days=3650)


class CAError(ValueError):
    """A CA directory cannot be made or used; the message is one line naming the file."""


@dataclass(frozen=True)
class CA:
    """A loaded interception CA: its certificate and private key (an EC or RSA key)."""

    cert: x509.Certificate
    key: Any
    directory: str


def _name() -> x509.Name:
    host = socket.gethostname() or "localhost"
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fwproxy"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"fwproxy interception CA ({host})"[:64]),
        ]
    )


def make_ca(now: datetime.datetime | None = None) -> tuple[x509.Certificate, Any]:
    """A new CA certificate and its key (nothing written)."""
    now = now or datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=2))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def init(directory: str) -> tuple[str, str]:
    """Write a new CA into ``directory`` (made 0700 if missing); the two paths written.

    :raise CAError: either file exists already, or the directory cannot be written.
    """
    cert_path = os.path.join(directory, CERT_FILE)
    key_path = os.path.join(directory, KEY_FILE)
    for path in (cert_path, key_path):
        if os.path.lexists(path):
            raise CAError(f"{path} exists already: not overwritten (remove it to make a new CA)")
    cert, key = make_ca()
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        pem_key = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # O_EXCL: never replace a file that appeared meanwhile; 0600 from the start
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem_key)
        fd = os.open(cert_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
    except OSError as e:
        raise CAError(f"{e.filename or directory}: cannot write: {e.strerror or e}") from None
    return cert_path, key_path


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CAError(f"cannot read {path}: {e.strerror or e}") from None


def load(directory: str) -> CA:
    """The CA in ``directory`` (``ca.pem`` and ``ca.key``), checked.

    :raise CAError: a file is missing or unreadable, is not PEM, the key is encrypted or does
        not belong to the certificate, or the certificate is not a CA's or not valid now.
    """
    cert_path = os.path.join(directory, CERT_FILE)
    key_path = os.path.join(directory, KEY_FILE)
    cert_pem, key_pem = _read(cert_path), _read(key_path)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise CAError(f"{cert_path} holds no PEM certificate (make one: fwproxy ca init)") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise CAError(f"{key_path}: the key is encrypted (fwproxy needs it unencrypted)") from None
    except ValueError:
        raise CAError(f"{key_path} holds no PEM private key") from None
    raw = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, raw) != cert.public_key().public_bytes(der, raw):
        raise CAError(f"{key_path} is not the key of the certificate in {cert_path}")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CAError(f"{cert_path} is not a CA certificate (no basicConstraints CA:TRUE)")
    now = datetime.datetime.now(datetime.UTC)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if not start <= now < end:
        # no leaf it signs could be valid (one would end before it begins)
        raise CAError(
            f"{cert_path} is valid from {start:%Y-%m-%d} to {end:%Y-%m-%d}: not now "
            "(make a new one: fwproxy ca init)"
        )
    return CA(cert, key, directory)
