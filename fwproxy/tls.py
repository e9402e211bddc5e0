# -*- test-case-name: tests.test_tls -*-
"""TLS on the proxy's own listeners: the ``ssl:`` endpoints, HTTPS *to* the proxy.

An ``ssl:PORT:privateKey=KEY[:certKey=CERT]`` description (also behind ``haproxy:``) is parsed
here (:func:`parse_ssl`) and listened on with a context fwproxy builds itself with pyOpenSSL
(:class:`ListenerTLS`): TLS 1.2 or newer; ALPN answered with ``http/1.1`` when the client offers
it and not at all otherwise (Twisted's own wrapper, for a factory that declares no protocols,
answers every ALPN offer with a fatal ``internal error`` alert, which is what every HTTPS-proxy
client offers); client certificates requested and verified against ``[tls] client_ca_file``
when it is set (``client_cert = "optional"`` or ``"required"``). :meth:`ListenerTLS.reload`
re-reads the files into a new context for new connections (SIGHUP); established connections
keep the one they started with. A handshake that fails is logged in one line naming the client
and the reason (:class:`TLSListenerFactory`), and :func:`client_cert` gives the connection
the verified client certificate's identity for the ``client_cert`` ACL and the access log.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IStreamServerEndpoint,
    ISystemHandle,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.haproxy import proxyEndpoint
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from fwproxy.acl import ClientCert

log = Logger()

#: what ``[tls] client_cert`` may say
CLIENT_CERT_MODES = ("optional", "required")

#: the only application protocol fwproxy speaks over TLS
HTTP_1_1 = b"http/1.1"

_SSL_KEYS = (
    "port",
    "interface",
    "backlog",
    "privateKey",
    "certKey",
    "extraCertChain",
    "dhParameters",
)


class TLSError(ValueError):
    """A TLS listener cannot be set up: ``str()`` is one line naming the file or parameter."""


class ClientCertPolicy(Protocol):
    """What ``[tls]`` says of client certificates (:class:`fwproxy.config.TlsConfig`)."""

    @property
    def client_ca_file(self) -> str | None: ...
    @property
    def client_cert(self) -> str: ...


@dataclass(frozen=True)
class NoClientCerts:
    """A :class:`ClientCertPolicy` asking for no client certificate."""

    client_ca_file: str | None = None
    client_cert: str = "optional"


# -- the ssl: description ------------------------------------------------------------------------


@dataclass(frozen=True)
class SSLListen:
    """What an ``ssl:`` description asks for. ``certificate`` is ``certKey`` (default: the
    ``privateKey`` file, holding both): the certificate first, then any chain; ``haproxy``:
    the description was ``haproxy:ssl:...`` (a PROXY header inside the TLS, as Twisted has it)."""

    description: str
    port: int
    private_key: str
    certificate: str
    interface: str = ""
    backlog: int = 50
    extra_chain: str | None = None
    dh_parameters: str | None = None
    haproxy: bool = False


def _split(text: str) -> list[tuple[str | None, str]]:
    """Twisted's endpoint string syntax: ``:``-separated arguments, ``key=value`` or
    positional, a backslash escaping the next character."""
    args: list[tuple[str | None, str]] = []
    key: str | None = None
    cur: list[str] = []
    chars = iter(text)
    for c in chars:
        if c == "\\":
            cur.append(next(chars, ""))
        elif c == ":":
            args.append((key, "".join(cur)))
            key, cur = None, []
        elif c == "=" and key is None:
            key, cur = "".join(cur), []
        else:
            cur.append(c)
    args.append((key, "".join(cur)))
    return args


def is_ssl(description: str) -> bool:
    """Whether ``description`` is an ``ssl:`` (or ``haproxy:ssl:``) endpoint: fwproxy's own."""
    kinds = [v for _, v in _split(description)[:2]]
    return kinds[:1] == ["ssl"] or kinds == ["haproxy", "ssl"]


def parse_ssl(description: str) -> SSLListen | None:
    """The ``ssl:`` (or ``haproxy:ssl:``) listener ``description`` asks for; ``None`` for any
    other kind of endpoint. Nothing is read or listened on.

    :raise TLSError: a parameter is missing, unknown or not a number.
    """
    args = _split(description)
    haproxy = args[0] == (None, "haproxy")
    if haproxy:
        args = args[1:]
    if not args or args[0] != (None, "ssl"):
        return None
    named: dict[str, str] = {}
    for i, (key, value) in enumerate(args[1:]):
        if key is None:
            if i >= len(_SSL_KEYS):
                raise TLSError(f"{description!r}: too many positional arguments")
            key = _SSL_KEYS[i]
        if key not in _SSL_KEYS:
            known = ", ".join(_SSL_KEYS)
            raise TLSError(f"{description!r}: unknown parameter {key!r} (known: {known})")
        named[key] = value
    numbers = {}
    for key in ("port", "backlog"):
        if key in named:
            try:
                numbers[key] = int(named[key])
            except ValueError:
                raise TLSError(f"{description!r}: {key} {named[key]!r} is not a number") from None
    if "port" not in numbers:
        raise TLSError(f"{description!r}: no port (ssl:PORT:privateKey=KEY.pem)")
    if not 0 <= numbers["port"] <= 65535:
        raise TLSError(f"{description!r}: port {numbers['port']} is out of range (0-65535)")
    if not named.get("privateKey"):
        raise TLSError(f"{description!r}: no privateKey=FILE (the listener's private key)")
    return SSLListen(
        description,
        numbers["port"],
        named["privateKey"],
        named.get("certKey") or named["privateKey"],
        named.get("interface", ""),
        numbers.get("backlog", 50),
        named.get("extraCertChain") or None,
        named.get("dhParameters") or None,
        haproxy,
    )


# -- files ------------------------------------------------------------------------------------


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSError(f"{path}: cannot read the {what}: {e.strerror or e}") from None


def load_certificates(path: str, what: str = "certificate") -> list[x509.Certificate]:
    """Every PEM certificate in ``path``, in order (other PEM blocks, such as a key, are
    skipped). :raise TLSError: none there, or the file cannot be read."""
    data = _read(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise TLSError(f"{path}: no PEM certificate in it (the {what})")
    return certs


def load_private_key(path: str) -> Any:
    """The PEM private key in ``path`` (beside certificates or not).

    :raise TLSError: none there, it is encrypted, or the file cannot be read."""
    data = _read(path, "private key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSError(
            f"{path}: the private key is encrypted (fwproxy needs it unencrypted)"
        ) from None
    except ValueError:
        raise TLSError(f"{path}: no PEM private key in it") from None


def _select_alpn(conn: SSL.Connection, offered: list[bytes]) -> Any:
    """HTTP/1.1 when the client offers it; otherwise no ALPN at all (the handshake goes on and
    the client decides), never a fatal alert."""
    return HTTP_1_1 if HTTP_1_1 in offered else SSL.NO_OVERLAPPING_PROTOCOLS


def server_context() -> SSL.Context:
    """A server context as fwproxy's TLS servers all start (its listeners, bumped tunnels):
    TLS 1.2 or newer, no compression or renegotiation, the server's cipher order, and no
    record buffers kept by an idle connection."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(
        SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_RENEGOTIATION
    )
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    return ctx


class ServerContext(NamedTuple):
    """A listener's pyOpenSSL context, and what its certificate is (for the log)."""

    context: SSL.Context
    #: ``CN=..., expires YYYY-MM-DD``
    certificate: str


def build_context(listen: SSLListen, clients: ClientCertPolicy) -> ServerContext:
    """A server context for ``listen``'s key and certificate (read now) and ``clients``' CA.

    :raise TLSError: a file is missing or unreadable, holds no key or certificate, or the key
        does not belong to the certificate.
    """
    key = load_private_key(listen.private_key)
    chain = load_certificates(listen.certificate)
    if listen.extra_chain:
        chain += load_certificates(listen.extra_chain, "extraCertChain")
    ctx = server_context()
    try:
        ctx.use_certificate(chain[0])
        for cert in chain[1:]:
            ctx.add_extra_chain_cert(cert)
        ctx.use_privatekey(key)
        ctx.check_privatekey()
    except (SSL.Error, TypeError, ValueError):
        raise TLSError(
            f"{listen.private_key}: the private key does not match the certificate in "
            f"{listen.certificate} (or is of a kind TLS cannot use)"
        ) from None
    if listen.dh_parameters:
        _read(listen.dh_parameters, "dhParameters")
        try:
            ctx.load_tmp_dh(listen.dh_parameters)
        except SSL.Error:
            raise TLSError(f"{listen.dh_parameters}: not PEM Diffie-Hellman parameters") from None
    # needed for client certificates with resumed sessions; any constant will do
    ctx.set_session_id(b"fwproxy")
    ctx.set_alpn_select_callback(_select_alpn)
    if clients.client_ca_file:
        for ca in load_certificates(clients.client_ca_file, "client_ca_file"):
            ctx.add_client_ca(ca)  # named to the client in the CertificateRequest
        ctx.load_verify_locations(clients.client_ca_file)
        mode = SSL.VERIFY_PEER
        if clients.client_cert == "required":
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        ctx.set_verify(mode, _verify)
    return ServerContext(ctx, describe(chain[0]))


def describe(cert: x509.Certificate) -> str:
    """``CN=..., expires YYYY-MM-DD`` (for the log)."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    subject = f"CN={cns[0].value!s}" if cns else cert.subject.rfc4514_string() or "no subject"
    expires: datetime.datetime = cert.not_valid_after_utc
    return f"{subject}, expires {expires:%Y-%m-%d}"


# -- connections ------------------------------------------------------------------------------

#: OpenSSL's X509_V_ERR_* codes a client certificate most often fails with
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    26: "unsupported certificate purpose",
}


def _verify(conn: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
    """OpenSSL's verdict, unchanged; a failure's code is kept for the log line."""
    if not ok and isinstance(conn, ServerConnection) and conn.verify_error is None:
        conn.verify_error = errno
    return bool(ok)


class ServerConnection(SSL.Connection):
    """A listener's TLS connection that remembers how its handshake ended."""

    #: the handshake has completed
    handshake_done = False
    #: why the handshake failed, if it did (OpenSSL's error)
    handshake_error: SSL.Error | None = None
    #: the X509_V_ERR code a client certificate failed with
    verify_error: int | None = None

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except SSL.WantReadError:
            raise
        except SSL.Error as e:
            self.handshake_error = e
            raise
        self.handshake_done = True

    def verified_client_cert(self) -> ClientCert | None:
        """The identity of the client's certificate, if the handshake verified one."""
        if not self.handshake_done or not self.get_context().get_verify_mode() & SSL.VERIFY_PEER:
            return None
        cert = self.get_peer_certificate(as_cryptography=True)
        return identity(cert) if cert is not None else None


def identity(cert: x509.Certificate) -> ClientCert:
    """What the ACLs and the log see of a verified certificate: its subject CN (logged) and
    its SAN DNS names, matched case-insensitively."""
    cns = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    except (x509.ExtensionNotFound, ValueError):
        dns = []
    shown = [n for n in cns + dns if n]
    names = tuple(dict.fromkeys(n.lower() for n in shown))
    return ClientCert(shown[0] if shown else "", names)


def client_cert(transport: object) -> ClientCert | None:
    """The verified client certificate of a connection on a TLS listener (``None`` on any
    other transport, or when the client presented none)."""
    if not ISystemHandle.providedBy(transport):
        return None
    handle = transport.getHandle()  # type: ignore[attr-defined]
    if isinstance(handle, ServerConnection):
        return handle.verified_client_cert()
    return None


def failure_reason(conn: ServerConnection) -> str:
    """Why ``conn``'s handshake failed, in words, with what it most likely means."""
    error = conn.handshake_error
    if error is None:
        return "the connection closed during the handshake"
    details = error.args[0] if error.args and isinstance(error.args[0], list) else []
    reasons = [str(d[-1]) for d in details if isinstance(d, tuple) and d and d[-1]]
    reason = reasons[-1] if reasons else str(error) or type(error).__name__
    if "http request" in reason or "https proxy request" in reason:
        return f"{reason} (plain HTTP on the TLS port: use an https:// proxy URL)"
    if any(a in reason for a in ("unknown ca", "bad certificate", "certificate unknown")):
        return f"{reason} (the client does not trust the proxy's certificate)"
    if "peer did not return a certificate" in reason:
        return f'{reason} (client_cert = "required" and the client sent none)'
    if "certificate verify failed" in reason and conn.verify_error is not None:
        why = _VERIFY_ERRORS.get(conn.verify_error, f"verify error {conn.verify_error}")
        return f"{reason}: the client certificate: {why}"
    return reason


# -- the listener -------------------------------------------------------------------------------


@implementer(IOpenSSLServerConnectionCreator)
class ListenerTLS:
    """The TLS side of one ``ssl:`` listener: its current context, replaced on reload.

    :raise TLSError: the files cannot be used (see :func:`build_context`).
    """

    def __init__(self, listen: SSLListen, clients: ClientCertPolicy) -> None:
        self.listen = listen
        self.current = build_context(listen, clients)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return ServerConnection(self.current.context)

    def prepare(self, clients: ClientCertPolicy) -> ServerContext:
        """Read the files again into a new context, not in use yet (:meth:`use` it).

        :raise TLSError: as for a new listener; the running context stays.
        """
        return build_context(self.listen, clients)

    def use(self, context: ServerContext) -> None:
        """New connections get ``context``; established ones keep theirs."""
        self.current = context

    def reload(self, clients: ClientCertPolicy) -> None:
        """:meth:`prepare`, then :meth:`use`."""
        self.use(self.prepare(clients))


class HandshakeLoggingTLS(BufferingTLSTransport):
    """Twisted's TLS transport, logging a handshake that did not complete."""

    _received = False

    def dataReceived(self, data: bytes) -> None:
        self._received = True
        super().dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        conn = self.getHandle()
        if isinstance(conn, ServerConnection) and not conn.handshake_done:
            # nothing sent at all is a port check (a load balancer's), not a failure
            if self._received or conn.handshake_error is not None:
                peer = self.getPeer()
                host, port = getattr(peer, "host", "?"), getattr(peer, "port", 0)
                log.info(
                    "fwproxy: TLS handshake with {client} failed: {reason}",
                    client=f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}",
                    reason=failure_reason(conn),
                )
        super().connectionLost(reason)


class TLSListenerFactory(TLSMemoryBIOFactory):
    """Wraps the proxy's factory in TLS for one listener; logs failed handshakes."""

    protocol = HandshakeLoggingTLS


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """Listens on TCP and speaks TLS with ``tls``'s current context."""

    def __init__(self, reactor: Any, tls: ListenerTLS) -> None:
        self.reactor = reactor
        self.tls = tls

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        spec = self.tls.listen
        tcp = TCP4ServerEndpoint(self.reactor, spec.port, spec.backlog, spec.interface)
        wrapped = TLSListenerFactory(self.tls, False, protocolFactory, clock=self.reactor)
        return tcp.listen(wrapped)


def server_endpoint(
    reactor: Any, description: str, clients: ClientCertPolicy
) -> tuple[IStreamServerEndpoint, ListenerTLS] | None:
    """The endpoint for an ``ssl:`` (or ``haproxy:ssl:``) listener and its TLS side; ``None``
    for other kinds of endpoint.

    :raise TLSError: the description or its files are not usable.
    """
    listen = parse_ssl(description)
    if listen is None:
        return None
    tls = ListenerTLS(listen, clients)
    endpoint: IStreamServerEndpoint = TLSServerEndpoint(reactor, tls)
    if listen.haproxy:
        endpoint = proxyEndpoint(endpoint)
    return endpoint, tls


def check_listener(description: str) -> str | None:
    """What is wrong with an ``ssl:`` description and its key and certificate files, or None
    (also for other kinds of endpoint, which this does not check)."""
    try:
        listen = parse_ssl(description)
        if listen is not None:
            build_context(listen, NoClientCerts())
    except TLSError as e:
        return str(e)
    return None
