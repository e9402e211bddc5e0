# -*- test-case-name: tests.test_origination -*-
"""TLS that fwproxy originates, verified: to an ``https://`` origin, or to a parent proxy with
``tls = true``.

An :class:`Origination` holds the upstream trust store (the system's, or ``[tls] ca_file``, which
names the upstream trust store only) and a client connection creator per host name, made with
Twisted's ``optionsForClientTLS`` (service_identity checks the certificate against the name;
SNI names the host; ALPN offers ``http/1.1`` only) and kept in a small cache. :meth:`wrap` puts a
protocol factory behind TLS. When a handshake fails, :func:`explain` says why in one line
(``certificate verify failed: hostname mismatch: ...``): the proxy answers ``502`` with it and
logs it, and never falls back to plain text.
"""

from __future__ import annotations

import ssl as _stdlib_ssl
import warnings
from collections import OrderedDict
from typing import Any

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from twisted.internet import error as ierror
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

#: what fwproxy offers over ALPN: it speaks HTTP/1.1 upstream and nothing else
ALPN = (b"http/1.1",)


class TrustStoreError(ValueError):
    """A ``ca_file`` that cannot be used; the message names the file and the problem."""


class TLSFailed(Exception):
    """A TLS connection fwproxy originated did not come up; the message says why (one line,
    e.g. ``certificate verify failed: hostname mismatch: ...``)."""


def load_certificates(path: str) -> list[x509.Certificate]:
    """The certificates of the PEM file ``path``.

    :raise TrustStoreError: unreadable, not PEM, or no certificate in it.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TrustStoreError(f"cannot read {path}: {e.strerror or e}") from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise TrustStoreError(f"{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise TrustStoreError(f"{path}: not a valid PEM certificate: {e}") from None


def system_certificates() -> list[x509.Certificate] | None:
    """The CA certificates of the system trust store: the CA file OpenSSL uses by default
    (``SSL_CERT_FILE`` overrides it; ``/etc/ssl/certs/ca-certificates.crt`` on Debian), or None
    when there is no such file."""
    cafile = _stdlib_ssl.get_default_verify_paths().cafile
    if cafile is None:
        return None
    with warnings.catch_warnings():
        # a system bundle may hold an old root with a non-positive serial number: still trusted
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        try:
            return load_certificates(cafile)
        except TrustStoreError:
            return None


class Origination:
    """Client TLS for upstream connections, verified against one trust store.

    The trust store is read once, when the first TLS connection is made, and its certificates
    are shared by the TLS context of every host name (an OpenSSL context that loads the system
    bundle itself costs about 0.9 MiB; sharing the parsed certificates, about 16 KiB).

    :param reactor: the clock the TLS transports schedule their write flushes on.
    :param ca_file: a PEM file of the CA certificates to trust upstream, instead of the system
        trust store.
    :param cache_size: creators kept, one per host name, most recently used.
    """

    def __init__(self, reactor: Any, ca_file: str | None = None, cache_size: int = 256) -> None:
        self._reactor = reactor
        self.ca_file = ca_file
        self._certificates: list[x509.Certificate] | None = None
        self._trust: Any = None
        self._cache: OrderedDict[str, IOpenSSLClientConnectionCreator] = OrderedDict()
        self._cache_size = cache_size

    def trust_root(self) -> Any:
        """The trust store as an ``IOpenSSLTrustRoot`` (read at the first call).

        :raise TrustStoreError: ``ca_file`` can no longer be used.
        """
        if self._trust is None:
            if self.ca_file is not None:
                self._certificates = load_certificates(self.ca_file)
            else:
                self._certificates = system_certificates()
            if self._certificates is None:  # no system CA file: OpenSSL's own look-up
                self._trust = platformTrust()
            else:
                self._trust = trustRootFromCertificates(
                    [Certificate(crypto.X509.from_cryptography(c)) for c in self._certificates]
                )
        return self._trust

    def creator(self, hostname: str) -> IOpenSSLClientConnectionCreator:
        """The connection creator for ``hostname`` (verified against it; SNI for a DNS name)."""
        cache = self._cache
        found = cache.get(hostname)
        if found is not None:
            cache.move_to_end(hostname)
            return found
        made = optionsForClientTLS(hostname, self.trust_root(), acceptableProtocols=list(ALPN))
        cache[hostname] = made
        if len(cache) > self._cache_size:
            cache.popitem(last=False)
        return made

    def wrap(self, factory: Any, hostname: str) -> TLSMemoryBIOFactory:
        """``factory``'s protocols behind client TLS to ``hostname``."""
        return TLSMemoryBIOFactory(self.creator(hostname), True, factory, self._reactor)

    def explain(self, reason: Failure, transport: Any, hostname: str) -> str:
        """Why the handshake with ``hostname`` over ``transport`` (a TLS transport, whose
        ``getHandle()`` is the OpenSSL connection) ended with ``reason``: one line."""
        store = self.ca_file if self.ca_file is not None else "the system trust store"
        return explain(reason, transport, hostname, store, self._certificates)


def _names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [str(a.value) for a in cert.subject]
    names: list[str] = san.get_values_for_type(x509.DNSName)
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return names


def _peer_chain(transport: Any) -> list[x509.Certificate]:
    try:
        chain = transport.getHandle().get_peer_cert_chain(as_cryptography=True)
    except Exception:  # noqa: BLE001 - no handle, no chain: explained without it
        return []
    return list(chain or [])


def _chain_problem(
    chain: list[x509.Certificate], store_name: str, trusted: list[x509.Certificate] | None
) -> str:
    """What OpenSSL says is wrong with ``chain`` (leaf first) against ``trusted`` (None: the
    system's default locations)."""
    store = crypto.X509Store()
    if trusted is not None:
        for cert in trusted:
            store.add_cert(crypto.X509.from_cryptography(cert))
    else:
        paths = _stdlib_ssl.get_default_verify_paths()
        store.load_locations(paths.cafile, paths.capath)
    leaf, *rest = (crypto.X509.from_cryptography(c) for c in chain)
    try:
        crypto.X509StoreContext(store, leaf, rest).verify_certificate()
    except crypto.X509StoreContextError as e:
        subject = e.certificate.to_cryptography().subject.rfc4514_string()
        return f"{e} ({subject}; trusted: {store_name})"
    return ""


def explain(
    reason: Failure,
    transport: Any,
    hostname: str,
    store_name: str = "the system trust store",
    trusted: list[x509.Certificate] | None = None,
) -> str:
    """One line saying why a TLS handshake with ``hostname`` failed with ``reason``, the peer's
    chain checked again against ``trusted`` (named ``store_name``) to say what is wrong with
    it (see :meth:`Origination.explain`)."""
    error = reason.value
    if isinstance(error, VerificationError):
        chain = _peer_chain(transport)
        named = ", ".join(_names(chain[0])) if chain else "other names"
        return (
            f"certificate verify failed: hostname mismatch: the certificate is for {named}, "
            f"not {hostname}"
        )
    if isinstance(error, SSL.Error):
        texts = [str(e[2]) for e in error.args[0] if len(e) > 2] if error.args else []
        text = "; ".join(t for t in texts if t) or str(error)
        if "certificate verify failed" in text:
            chain = _peer_chain(transport)
            try:
                detail = _chain_problem(chain, store_name, trusted) if chain else ""
            except Exception:  # noqa: BLE001 - the reason OpenSSL gave is still the reason
                detail = ""
            return f"certificate verify failed: {detail}" if detail else text
        return f"TLS handshake failed: {text}"
    if isinstance(error, (ierror.ConnectionDone, ierror.ConnectionLost)):
        return "TLS handshake failed: the server closed the connection"
    return f"TLS handshake failed: {reason.getErrorMessage()}"
