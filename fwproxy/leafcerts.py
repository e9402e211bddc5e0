# -*- test-case-name: tests.test_intercept -*-
"""Leaf certificates for intercepted (bumped) tunnels, made on demand and cached.

:class:`LeafCerts` signs, with the interception CA (:mod:`fwproxy.cacert`), a certificate for a
server name (a DNS name in the SAN; an IP literal as an IP SAN) the first time a client asks
for it, and keeps a ready pyOpenSSL server context per name, least recently used dropped
beyond ``[intercept] cert_cache`` (making a context per handshake would cost more than the
handshake). One EC P-256 key pair serves every leaf, as in mitmproxy: the leaf's key protects
nothing the CA key does not. The contexts speak TLS 1.2 or newer and answer ALPN with
``http/1.1`` only (:func:`select_alpn`): a client that offers only ``h2`` gets no ALPN answer
(never a fatal alert), and :attr:`BumpedConnection.alpn_refused` says so for the log.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections import OrderedDict
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL

from fwproxy.cacert import CA
from fwproxy.tls import HTTP_1_1, ServerConnection, server_context

#: a leaf certificate's validity: a year (what mitmproxy gives), never past the CA's own
LEAF_VALIDITY = datetime.timedelta(days=365)


class BumpedConnection(ServerConnection):
    """The TLS connection towards a bumped client; remembers an ALPN offer it could not take."""

    #: the ALPN protocols the client offered, when ``http/1.1`` was not among them
    alpn_refused: tuple[bytes, ...] = ()


def select_alpn(conn: SSL.Connection, offered: list[bytes]) -> Any:
    """``http/1.1`` when the client offers it; otherwise no ALPN at all (the handshake goes
    on, the client decides; an alert would read as a broken server), noted on ``conn``."""
    if HTTP_1_1 in offered:
        return HTTP_1_1
    if isinstance(conn, BumpedConnection):
        conn.alpn_refused = tuple(offered)
    return SSL.NO_OVERLAPPING_PROTOCOLS


def normalise(name: str) -> str:
    """The cache key and certificate name for ``name``: lower case, no trailing dot, an IPv6
    literal without brackets."""
    return name.strip("[]").rstrip(".").lower()


def leaf_certificate(
    ca: CA, key: Any, name: str, now: datetime.datetime | None = None
) -> x509.Certificate:
    """A certificate for ``name`` (a DNS name or an IP literal) with public key ``key``'s,
    signed by ``ca``."""
    now = now or datetime.datetime.now(datetime.UTC)
    try:
        san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        san = x509.DNSName(name)
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    not_after = min(now + LEAF_VALIDITY, ca.cert.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fwproxy"),
                    x509.NameAttribute(NameOID.COMMON_NAME, name[:64]),
                ]
            )
        )
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=2))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
        .sign(ca.key, hashes.SHA256())
    )


class LeafCerts:
    """Server contexts with a leaf certificate per name, signed by ``ca``; at most
    ``cache_size`` kept, the least recently used dropped first."""

    def __init__(self, ca: CA, cache_size: int = 1000) -> None:
        self.ca = ca
        self.cache_size = max(1, cache_size)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self._contexts: OrderedDict[str, SSL.Context] = OrderedDict()
        #: leaf certificates signed so far (the cache's misses)
        self.made = 0

    def __len__(self) -> int:
        return len(self._contexts)

    def __contains__(self, name: str) -> bool:
        return normalise(name) in self._contexts

    def context(self, name: str) -> SSL.Context:
        """The server context presenting a certificate for ``name`` (made if not cached)."""
        name = normalise(name)
        cache = self._contexts
        found = cache.get(name)
        if found is not None:
            cache.move_to_end(name)
            return found
        made = self._build(name)
        cache[name] = made
        if len(cache) > self.cache_size:
            cache.popitem(last=False)
        return made

    def connection(self, name: str) -> BumpedConnection:
        """A new server-side TLS connection for a client that asked for ``name``."""
        return BumpedConnection(self.context(name))

    def _build(self, name: str) -> SSL.Context:
        cert = leaf_certificate(self.ca, self.key, name)
        self.made += 1
        ctx = server_context()
        ctx.use_certificate(cert)
        ctx.add_extra_chain_cert(self.ca.cert)
        ctx.use_privatekey(self.key)
        ctx.set_alpn_select_callback(select_alpn)
        return ctx
