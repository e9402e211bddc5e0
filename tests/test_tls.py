"""The ``ssl:`` listener's TLS (fwproxy.tls), without sockets.

Handshakes run between a pyOpenSSL client connection and the listener's server side in memory
(bytes moved by hand, over a ``FakeTransport`` where the Twisted wrapper is involved), with
certificates made by ``trustme`` in the test: ALPN (``http/1.1`` or nothing, never a fatal
alert), client certificates (optional, required, from another CA), the identity a connection
gets, reloads (a new context for new connections only), the one-line log of a failed handshake,
and a whole request through the proxy's factory over TLS, where a ``client_cert`` ACL decides
and the access log record carries the certificate's name as its user.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, formatEvent

from fwproxy import tls
from fwproxy.acl import ClientCert
from fwproxy.config import Config, TlsConfig
from fwproxy.testing import Harness
from fwproxy.testing.doubles import FakeTransport, address
from fwproxy.testing.wire import status_of

trustme = pytest.importorskip("trustme")


# -- certificates --------------------------------------------------------------------------------


class Certs:
    """A CA for the proxy, a CA for clients, and files for them in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.server_ca = trustme.CA()
        self.client_ca = trustme.CA()
        self.key = directory / "proxy.pem"  # key and certificate in one file
        self.issue_server("proxy.test")
        self.client_ca_file = directory / "clients-ca.pem"
        self.client_ca.cert_pem.write_to_path(str(self.client_ca_file))

    def issue_server(self, name: str) -> Any:
        cert = self.server_ca.issue_cert(name, "127.0.0.1", common_name=name)
        cert.private_key_and_cert_chain_pem.write_to_path(str(self.key))
        return cert

    def listen(self, **extra: str) -> tls.SSLListen:
        text = f"ssl:0:privateKey={self.key}" + "".join(f":{k}={v}" for k, v in extra.items())
        listen = tls.parse_ssl(text)
        assert listen is not None
        return listen

    def client_context(
        self, cert: Any = None, alpn: list[bytes] | None = None, trust: bool = True
    ) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        if trust:
            pem = self.dir / "server-ca.pem"
            self.server_ca.cert_pem.write_to_path(str(pem))
            ctx.load_verify_locations(str(pem))
            ctx.set_verify(SSL.VERIFY_PEER)
        if cert is not None:
            both = self.dir / f"client-{id(cert)}.pem"
            cert.private_key_and_cert_chain_pem.write_to_path(str(both))
            ctx.use_certificate_chain_file(str(both))
            ctx.use_privatekey_file(str(both))
        if alpn:
            ctx.set_alpn_protos(alpn)
        return ctx


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return Certs(tmp_path)


def policy(certs: Certs, mode: str | None = None) -> TlsConfig:
    if mode is None:
        return TlsConfig()
    return TlsConfig(str(certs.client_ca_file), mode)


# -- an in-memory handshake ---------------------------------------------------------------------


def outgoing(conn: SSL.Connection) -> bytes:
    """Everything ``conn`` has written to its memory BIO."""
    out = b""
    while True:
        try:
            chunk = conn.bio_read(65536)
        except SSL.WantReadError:
            return out
        if not chunk:
            return out
        out += chunk


class Peer:
    """A pyOpenSSL client and a server side that takes bytes (``feed``) and hands back what
    it wrote (``drain``); :meth:`pump` moves bytes until neither side has more."""

    def __init__(
        self, ctx: SSL.Context, feed: Callable[[bytes], None], drain: Callable[[], bytes]
    ) -> None:
        self.conn = SSL.Connection(ctx)
        self.conn.set_connect_state()
        self.conn.set_tlsext_host_name(b"proxy.test")
        self._feed, self._drain = feed, drain
        self.error: SSL.Error | None = None
        self.received = b""

    def pump(self) -> None:
        for _ in range(100):
            try:
                self.conn.do_handshake()
                while True:
                    self.received += self.conn.recv(65536)
            except SSL.WantReadError:
                pass
            except SSL.ZeroReturnError:
                pass
            except SSL.Error as e:
                self.error = e
            out = outgoing(self.conn)
            if out:
                self._feed(out)
            back = self._drain()
            if back:
                self.conn.bio_write(back)
            if not out and not back:
                return
        raise AssertionError("the handshake did not settle")

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)
        self.pump()

    @property
    def alpn(self) -> bytes:
        return self.conn.get_alpn_proto_negotiated()

    @property
    def server_cn(self) -> str:
        cert = self.conn.get_peer_certificate(as_cryptography=True)
        assert cert is not None
        return f"CN={cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value!s}"


def raw_handshake(listener: tls.ListenerTLS, ctx: SSL.Context) -> tuple[Peer, Any]:
    """A handshake with the listener's connection itself (no Twisted)."""
    server = listener.serverConnectionForTLS(None)
    server.set_accept_state()

    def feed(data: bytes) -> None:
        server.bio_write(data)
        try:
            server.do_handshake()
        except SSL.WantReadError:
            pass
        except SSL.Error:
            pass

    peer = Peer(ctx, feed, lambda: outgoing(server))
    peer.pump()
    return peer, server


# -- the ssl: description -----------------------------------------------------------------------


def test_an_ssl_description_is_parsed_as_twisted_writes_it() -> None:
    s = tls.parse_ssl(
        r"ssl:3129:interface=\:\:1:backlog=7:privateKey=/k.pem:certKey=/c.pem:extraCertChain=/x"
    )
    assert s is not None
    assert (s.port, s.interface, s.backlog) == (3129, "::1", 7)
    assert (s.private_key, s.certificate, s.extra_chain, s.haproxy) == (
        "/k.pem",
        "/c.pem",
        "/x",
        False,
    )
    both = tls.parse_ssl("haproxy:ssl:port=443:privateKey=both.pem")
    assert both is not None and both.haproxy
    assert (both.port, both.certificate, both.interface) == (443, "both.pem", "")


def test_other_endpoints_are_not_ssl() -> None:
    for text in ("tcp:3128", "haproxy:tcp:3128", "unix:/run/x.sock", "ssl6:1"):
        assert tls.parse_ssl(text) is None
        assert not tls.is_ssl(text)
    assert tls.is_ssl("ssl:1:privateKey=k")
    assert tls.is_ssl("haproxy:ssl:1")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("ssl:privateKey=k.pem", "no port"),
        ("ssl:http:privateKey=k.pem", "port 'http' is not a number"),
        ("ssl:70000:privateKey=k.pem", "port 70000 is out of range"),
        ("ssl:3129", "no privateKey=FILE"),
        ("ssl:3129:privateKey=k.pem:sslmethod=TLSv1_METHOD", "unknown parameter 'sslmethod'"),
        ("ssl:3129:privateKey=k.pem:backlog=many", "backlog 'many' is not a number"),
    ],
)
def test_a_bad_ssl_description_is_named_with_its_problem(text: str, problem: str) -> None:
    with pytest.raises(tls.TLSError) as caught:
        tls.parse_ssl(text)
    assert str(caught.value) == f"{text!r}: " + str(caught.value).split(": ", 1)[1]
    assert problem in str(caught.value)
    assert "\n" not in str(caught.value)


# -- files ----------------------------------------------------------------------------------------


def test_unusable_files_are_named_in_one_line(certs: Certs, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    assert tls.check_listener(f"ssl:0:privateKey={missing}") == (
        f"{missing}: cannot read the private key: No such file or directory"
    )
    only_cert = tmp_path / "cert-only.pem"
    certs.server_ca.cert_pem.write_to_path(str(only_cert))
    assert tls.check_listener(f"ssl:0:privateKey={only_cert}") == (
        f"{only_cert}: no PEM private key in it"
    )
    key_only = tmp_path / "key-only.pem"
    certs.server_ca.issue_cert("x.test").private_key_pem.write_to_path(str(key_only))
    assert tls.check_listener(f"ssl:0:privateKey={key_only}") == (
        f"{key_only}: no PEM certificate in it (the certificate)"
    )
    other = tmp_path / "other.pem"
    certs.server_ca.issue_cert("other.test").cert_chain_pems[0].write_to_path(str(other))
    problem = tls.check_listener(f"ssl:0:privateKey={certs.key}:certKey={other}")
    assert problem is not None
    assert problem.startswith(f"{certs.key}: the private key does not match the certificate in")
    assert tls.check_listener(f"ssl:0:privateKey={certs.key}") is None
    assert tls.check_listener("tcp:0") is None


def test_an_encrypted_key_is_refused_by_name(certs: Certs, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(certs.key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    assert "is encrypted" in str(tls.check_listener(f"ssl:0:privateKey={encrypted}"))


# -- ALPN -----------------------------------------------------------------------------------------


def test_alpn_offering_http_1_1_gets_it(certs: Certs) -> None:
    listener = tls.ListenerTLS(certs.listen(), policy(certs))
    peer, _ = raw_handshake(listener, certs.client_context(alpn=[b"h2", b"http/1.1"]))
    assert peer.error is None
    assert peer.alpn == b"http/1.1"


def test_alpn_without_http_1_1_gets_no_protocol_and_no_alert(certs: Certs) -> None:
    listener = tls.ListenerTLS(certs.listen(), policy(certs))
    peer, server = raw_handshake(listener, certs.client_context(alpn=[b"h2"]))
    assert peer.error is None and server.handshake_done
    assert peer.alpn == b""


def test_no_alpn_offer_is_fine(certs: Certs) -> None:
    listener = tls.ListenerTLS(certs.listen(), policy(certs))
    peer, server = raw_handshake(listener, certs.client_context())
    assert peer.error is None and server.handshake_done and peer.alpn == b""


def test_tls_1_1_is_refused(certs: Certs) -> None:
    listener = tls.ListenerTLS(certs.listen(), policy(certs))
    ctx = certs.client_context()
    ctx.set_max_proto_version(SSL.TLS1_1_VERSION)
    peer, server = raw_handshake(listener, ctx)
    assert peer.error is not None and not server.handshake_done
    assert server.handshake_error is not None


# -- client certificates -------------------------------------------------------------------------


def test_an_optional_client_certificate_gives_the_connection_an_identity(certs: Certs) -> None:
    listener = tls.ListenerTLS(certs.listen(), policy(certs, "optional"))
    alice = certs.client_ca.issue_cert("Alice.Clients.test", "a2.clients.test", common_name="Alice")
    peer, server = raw_handshake(listener, certs.client_context(alice))
    assert peer.error is None
    assert server.verified_client_cert() == ClientCert(
        "Alice", ("alice", "alice.clients.test", "a2.clients.test")
    )
    # without one, still served, with no identity
    peer, server = raw_handshake(listener, certs.client_context())
    assert peer.error is None and server.handshake_done
    assert server.verified_client_cert() is None


def test_a_required_client_certificate_fails_the_handshake_without_one(certs: Certs) -> None:
    listener = tls.ListenerTLS(certs.listen(), policy(certs, "required"))
    peer, server = raw_handshake(listener, certs.client_context())
    assert not server.handshake_done
    assert "peer did not return a certificate" in tls.failure_reason(server)
    assert 'client_cert = "required"' in tls.failure_reason(server)
    bob = certs.client_ca.issue_cert("bob.clients.test")
    peer, server = raw_handshake(listener, certs.client_context(bob))
    assert peer.error is None and server.handshake_done
    cert = server.verified_client_cert()
    assert cert is not None and cert.name == "bob.clients.test"  # no CN: the first SAN name


def test_a_client_certificate_from_another_ca_fails_and_says_why(certs: Certs) -> None:
    listener = tls.ListenerTLS(certs.listen(), policy(certs, "optional"))
    stranger = trustme.CA().issue_cert("eve.test", common_name="eve")
    peer, server = raw_handshake(listener, certs.client_context(stranger))
    assert not server.handshake_done
    reason = tls.failure_reason(server)
    assert reason.startswith("certificate verify failed")
    assert "unable to get local issuer certificate" in reason


def test_without_client_ca_no_certificate_is_asked_for_or_trusted(certs: Certs) -> None:
    listener = tls.ListenerTLS(certs.listen(), policy(certs))
    alice = certs.client_ca.issue_cert("alice.test")
    peer, server = raw_handshake(listener, certs.client_context(alice))
    assert peer.error is None and server.handshake_done
    assert server.get_peer_certificate() is None
    assert server.verified_client_cert() is None


# -- reload ---------------------------------------------------------------------------------------


def test_reload_reads_the_files_again_for_new_connections_only(certs: Certs) -> None:
    listener = tls.ListenerTLS(certs.listen(), policy(certs))
    assert listener.current.certificate.startswith("CN=proxy.test, expires ")
    early = listener.serverConnectionForTLS(None)  # accepted before the reload
    certs.issue_server("renewed.test")
    listener.reload(policy(certs))
    assert listener.current.certificate.startswith("CN=renewed.test")
    peer, _ = raw_handshake(listener, certs.client_context())
    assert peer.server_cn == "CN=renewed.test"
    # the connection accepted before the reload keeps the context it started with
    early.set_accept_state()

    def feed(data: bytes) -> None:
        early.bio_write(data)
        try:
            early.do_handshake()
        except SSL.WantReadError:
            pass

    old = Peer(certs.client_context(), feed, lambda: outgoing(early))
    old.pump()
    assert old.error is None and old.server_cn == "CN=proxy.test"


def test_a_failed_reload_keeps_the_running_context(certs: Certs) -> None:
    listener = tls.ListenerTLS(certs.listen(), policy(certs))
    running = listener.current
    certs.key.write_text("not a key\n")
    with pytest.raises(tls.TLSError, match="no PEM private key"):
        listener.reload(policy(certs))
    assert listener.current is running


# -- through Twisted's TLS wrapper: logging, identity ------------------------------------------


class Wrapped:
    """The listener's TLS protocol over a FakeTransport, around ``factory``'s protocol."""

    def __init__(self, listener: tls.ListenerTLS, factory: Any, peer: tuple[str, int]) -> None:
        self.clock = MemoryReactorClock()
        wrapping = tls.TLSListenerFactory(listener, False, factory, clock=self.clock)
        self.proto = wrapping.buildProtocol(address(*peer))
        self.transport = FakeTransport(address("127.0.0.1", 3129), address(*peer))
        self.proto.makeConnection(self.transport)

    def peer(self, ctx: SSL.Context) -> Peer:
        def drain() -> bytes:
            self.clock.advance(0)  # Twisted's TLS transport batches writes for one iteration
            return self.transport.take()

        return Peer(ctx, self.proto.dataReceived, drain)

    def lost(self) -> None:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.proto.connectionLost(Failure(ConnectionDone()))


class Nothing:
    """A protocol factory whose protocols do nothing."""

    def doStart(self) -> None: ...
    def doStop(self) -> None: ...

    def buildProtocol(self, addr: Any) -> Any:
        from twisted.internet.protocol import Protocol

        return Protocol()


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    lines: list[str] = []
    monkeypatch.setattr(tls, "log", Logger(observer=lambda e: lines.append(formatEvent(e))))
    return lines


def test_plain_http_on_the_tls_port_is_logged_with_the_client(
    certs: Certs, logged: list[str]
) -> None:
    w = Wrapped(tls.ListenerTLS(certs.listen(), policy(certs)), Nothing(), ("192.0.2.7", 40123))
    w.proto.dataReceived(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
    w.lost()
    assert len(logged) == 1
    assert re.fullmatch(
        r"fwproxy: TLS handshake with 192\.0\.2\.7:40123 failed: http request "
        r"\(plain HTTP on the TLS port: use an https:// proxy URL\)",
        logged[0],
    ), logged


def test_a_client_that_does_not_trust_the_proxy_is_logged(certs: Certs, logged: list[str]) -> None:
    w = Wrapped(tls.ListenerTLS(certs.listen(), policy(certs)), Nothing(), ("::1", 5))
    ctx = certs.client_context(trust=False)
    ctx.set_verify(SSL.VERIFY_PEER)  # and no CA loaded: the proxy's certificate fails
    peer = w.peer(ctx)
    peer.pump()
    w.lost()
    assert peer.error is not None
    assert len(logged) == 1 and logged[0].startswith("fwproxy: TLS handshake with [::1]:5 failed")
    assert "(the client does not trust the proxy's certificate)" in logged[0]


def test_a_port_check_and_a_good_handshake_are_not_logged(certs: Certs, logged: list[str]) -> None:
    listener = tls.ListenerTLS(certs.listen(), policy(certs))
    Wrapped(listener, Nothing(), ("127.0.0.1", 1)).lost()  # connect, close: no bytes
    w = Wrapped(listener, Nothing(), ("127.0.0.1", 2))
    w.peer(certs.client_context()).pump()
    w.lost()
    assert logged == []
    half = Wrapped(listener, Nothing(), ("127.0.0.1", 3))
    half.proto.dataReceived(b"\x16\x03\x01\x02\x00")  # the start of a ClientHello, then gone
    half.lost()
    assert logged == [
        "fwproxy: TLS handshake with 127.0.0.1:3 failed: the connection closed during the handshake"
    ]


def test_the_identity_reaches_the_connection_through_the_transport(certs: Certs) -> None:
    listener = tls.ListenerTLS(certs.listen(), policy(certs, "optional"))
    w = Wrapped(listener, Nothing(), ("127.0.0.1", 9))
    assert tls.client_cert(w.proto) is None  # before the handshake
    w.peer(certs.client_context(certs.client_ca.issue_cert("c.test", common_name="Carol"))).pump()
    assert tls.client_cert(w.proto) == ClientCert("Carol", ("carol", "c.test"))
    assert tls.client_cert(w.transport) is None  # a plain TCP transport
    assert tls.client_cert(object()) is None


# -- a request through the proxy over TLS ---------------------------------------------------------

ACL_CONFIG = """
[tls]
client_ca_file = '{ca}'

[acl.localhost]
src = ["127.0.0.0/8"]

[acl.team]
client_cert = [".clients.test", "robot"]

[access]
rules = ["allow localhost team", "deny all"]
"""


def proxied(certs: Certs, make: Callable[..., Harness], cert: Any) -> tuple[Harness, Peer]:
    h = make(ACL_CONFIG.format(ca=certs.client_ca_file))
    listener = tls.ListenerTLS(certs.listen(), h.config.tls)
    w = Wrapped(listener, h.factory, ("127.0.0.1", 50000))
    peer = w.peer(certs.client_context(cert, alpn=[b"http/1.1"]))
    peer.pump()
    assert peer.error is None and peer.alpn == b"http/1.1"
    return h, peer


def test_a_client_cert_acl_allows_the_certified_and_logs_their_name(
    certs: Certs, make: Callable[..., Harness]
) -> None:
    alice = certs.client_ca.issue_cert("alice.clients.test", common_name="Alice")
    h, peer = proxied(certs, make, alice)
    peer.send(b"GET http://example.com/x HTTP/1.1\r\nHost: example.com\r\n\r\n")
    up = h.accept()  # allowed: the proxy connects to the origin
    assert up.take().startswith(b"GET /x HTTP/1.1\r\n")
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    peer.pump()
    assert status_of(peer.received) == 200
    assert [(r.status, r.user) for r in h.records] == [(200, "Alice")]


def test_a_client_cert_acl_denies_other_names_and_no_certificate(
    certs: Certs, make: Callable[..., Harness]
) -> None:
    for cert in (certs.client_ca.issue_cert("mallory.other.test"), None):
        h, peer = proxied(certs, make, cert)
        peer.send(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
        assert status_of(peer.received) == 403
        assert h.attempts == []
        user = "mallory.other.test" if cert is not None else ""
        assert [(r.status, r.user) for r in h.records] == [(403, user)]


# -- the service: listening, SIGHUP -------------------------------------------------------------


def tls_service(certs: Certs, reload: Callable[[], Config] | None = None) -> Any:
    from fwproxy.service import ProxyService

    config = Config(listen=(f"ssl:3129:interface=127.0.0.1:privateKey={certs.key}",))
    reactor = MemoryReactorClock()
    return ProxyService(config, reactor, reload=reload or (lambda: config)), reactor


@pytest.fixture
def service_log(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from fwproxy import service

    lines: list[str] = []
    monkeypatch.setattr(service, "log", Logger(observer=lambda e: lines.append(formatEvent(e))))
    return lines


def test_an_ssl_listener_is_fwproxys_own_tls_over_tcp(certs: Certs) -> None:
    svc, reactor = tls_service(certs)
    svc.startService()
    ((port, factory, backlog, interface),) = reactor.tcpServers
    assert (port, backlog, interface) == (3129, 50, "127.0.0.1")
    assert isinstance(factory, tls.TLSListenerFactory)
    assert factory.wrappedFactory is svc.factory
    assert [t.listen.port for t in svc.tls] == [3129]


def test_sighup_rereads_the_key_and_certificate(certs: Certs, service_log: list[str]) -> None:
    svc, _ = tls_service(certs)
    svc.startService()
    (listener,) = svc.tls
    certs.issue_server("renewed.test")
    assert svc.reload()
    assert listener.current.certificate.startswith("CN=renewed.test")
    assert any(
        "TLS key and certificate re-read (CN=renewed.test, expires" in line for line in service_log
    ), service_log


def test_a_reload_with_unusable_files_keeps_everything_running(
    certs: Certs, service_log: list[str]
) -> None:
    svc, _ = tls_service(certs)
    svc.startService()
    (listener,) = svc.tls
    running, config = listener.current, svc.factory.config
    certs.key.write_text("gone\n")
    assert not svc.reload()
    assert listener.current is running and svc.factory.config is config
    assert service_log[-1] == (
        "fwproxy: new configuration rejected, keeping the running one:\n"
        f"{certs.key}: no PEM private key in it"
    )


def test_unusable_files_at_start_are_one_listen_error(certs: Certs) -> None:
    from fwproxy.service import ListenError

    certs.key.write_text("")
    svc, reactor = tls_service(certs)
    with pytest.raises(ListenError) as caught:
        svc.startService()
    assert str(caught.value) == (
        f"cannot listen on ssl:3129:interface=127.0.0.1:privateKey={certs.key}: "
        f"{certs.key}: no PEM private key in it"
    )
    assert reactor.tcpServers == [] and svc.tls == [] and not svc.running
