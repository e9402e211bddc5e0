"""Bumped tunnels without sockets: the binding of the requests inside to the CONNECT authority
(:mod:`fwproxy.intercepted`) and the bump itself over in-memory transports
(:mod:`fwproxy.bump`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from OpenSSL import SSL
from support.certs import CA, MemoryTLSServer
from support.tlshello import crafted_hello
from twisted.internet.defer import Deferred
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from zope.interface import implementer

from fwproxy import cacert
from fwproxy.intercepted import Interception, _split_host
from fwproxy.interfaces import IRequestFilter
from fwproxy.leafcerts import LeafCerts
from fwproxy.message import Request, Response
from fwproxy.record import TCP_DENIED, TCP_TUNNEL
from fwproxy.testing import Client, FakeResolver, Harness
from fwproxy.tunnel import ESTABLISHED


@pytest.mark.parametrize(
    "value, expected",
    [
        (b"example.test", ("example.test", None)),
        (b"Example.TEST.:8443", ("example.test", 8443)),
        (b"[::1]:443", ("::1", 443)),
        (b"[::1]", ("::1", None)),
        (b"example.test:x", ("example.test:x", None)),
    ],
)
def test_split_host(value: bytes, expected: tuple[str, int | None]) -> None:
    assert _split_host(value) == expected


def test_the_tunnel_names_its_connect_host_and_server_name_on_its_port() -> None:
    it = Interception("Connect.Test", 443, "sni.test", None)
    assert it.prefix == b"https://connect.test"
    assert it.names("connect.test", None) and it.names("connect.test", 443)
    assert it.names("sni.test", None)
    assert not it.names("other.test", None)
    assert not it.names("connect.test", 8443)
    no_sni = Interception("::1", 8443, "", None)
    assert no_sni.prefix == b"https://[::1]:8443"
    assert no_sni.names("::1", 8443) and not no_sni.names("", 8443)


# -- a bump in memory: the harness's proxy, a pyOpenSSL client over memory BIOs ----------------


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("bump") / "ca"
    cacert.init(str(directory))
    return directory


def bump_config(ca_dir: Path, rules: str = '"bump all"') -> str:
    return f"""
[acl.localhost]
src = ["127.0.0.0/8"]
[access]
rules = ["allow localhost", "deny all"]
[timeouts]
client_hello = 3
[tunnel]
peek_ports = [443]
[intercept]
ca = "{ca_dir}"
rules = [{rules}]
"""


class MemoryTLSClient:
    """A TLS client over memory BIOs, its bytes carried by hand to and from the harness."""

    def __init__(
        self,
        client: Client,
        harness: Harness,
        ca_file: Path | None,
        sni: bytes,
        alpn: tuple[bytes, ...] = (b"h2", b"http/1.1"),
    ):
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_alpn_protos(list(alpn))
        if ca_file is not None:
            ctx.load_verify_locations(str(ca_file))
        ctx.set_verify(SSL.VERIFY_PEER, lambda *args: bool(args[-1]))
        self.conn = SSL.Connection(ctx, None)
        self.conn.set_tlsext_host_name(sni)
        self.conn.set_connect_state()
        self.client = client
        self.harness = harness
        self.failed = False
        self.received = 0  # bytes carried from the proxy

    def pump(self) -> None:
        """Carry bytes both ways until neither side has any to send."""
        for _ in range(20):
            moved = False
            try:
                self.conn.do_handshake()
            except SSL.WantReadError:
                pass
            except SSL.Error:
                self.failed = True  # its alert is in the BIO: carried to the proxy below
            try:
                out = self.conn.bio_read(65536)
            except SSL.WantReadError:
                out = b""
            if out:
                self.client.send(out)
                moved = True
            self.harness.clock.advance(0)  # the TLS layer flushes its writes on the clock
            back = self.client.take()
            if back:
                self.received += len(back)
                self.conn.bio_write(back)
                moved = True
            if not moved:
                return

    def request(self, data: bytes) -> bytes:
        self.conn.sendall(data)
        self.pump()
        try:
            return self.conn.recv(65536)
        except SSL.WantReadError:
            return b""


@pytest.fixture
def infos() -> Iterator[list[str]]:
    seen: list[str] = []

    def observe(event: LogEvent) -> None:
        seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def bumped(h: Harness, ca: Path | None, sni: bytes = b"example.com") -> tuple[Client, Any, Any]:
    c = h.connect()
    c.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    up = h.accept()
    assert c.take() == ESTABLISHED
    tls = MemoryTLSClient(c, h, ca, sni)
    tls.pump()
    return c, up, tls


def test_the_client_gets_a_certificate_for_its_server_name(
    make: Callable[..., Harness], ca_dir: Path
) -> None:
    h = make(bump_config(ca_dir))
    c, up, tls = bumped(h, ca_dir / "ca.pem")
    cert = tls.conn.get_peer_certificate(as_cryptography=True)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["example.com"]
    assert tls.conn.get_alpn_proto_negotiated() == b"http/1.1"
    # the tunnel's own connection to the origin is not used: closed, nothing was sent on it
    assert up.closed and up.received() == b""
    assert not c.closed


def test_another_host_is_misdirected_and_connect_refused(
    make: Callable[..., Harness], ca_dir: Path
) -> None:
    h = make(bump_config(ca_dir))
    c, _, tls = bumped(h, ca_dir / "ca.pem")
    answer = tls.request(b"GET / HTTP/1.1\r\nHost: other.example\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 421 Misdirected Request\r\n"), answer
    assert b"example.com:443, not to other.example" in answer
    answer = tls.request(b"GET https://other.example/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 421 "), answer
    answer = tls.request(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 405 "), answer
    c.lost()
    records = h.records
    assert [(r.method, r.status) for r in records] == [
        ("GET", 421),
        ("GET", 421),
        ("CONNECT", 405),
        ("CONNECT", 200),
    ]
    tunnel = records[-1]
    assert tunnel.result == TCP_TUNNEL and tunnel.notes["fwproxy.tls"] == "bumped"
    # the tunnel's bytes are the TLS the client exchanged with the proxy
    assert tunnel.bytes_out == len(ESTABLISHED) + tls.received
    assert tunnel.bytes_in > 3 * len(b"CONNECT example.com:443 HTTP/1.1\r\n")


def test_a_request_inside_goes_to_the_connect_authority_over_tls(
    make: Callable[..., Harness], ca_dir: Path
) -> None:
    h = make(bump_config(ca_dir))
    _, _, tls = bumped(h, ca_dir / "ca.pem")
    before = len(h.attempts)
    tls.request(b"GET /path?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    # a new (TLS) connection to the origin, for the relayed request
    assert len(h.attempts) == before + 1
    host, port = h.attempts[-1][:2]
    assert port == 443


def test_a_client_rejecting_the_ca_is_logged(
    make: Callable[..., Harness], ca_dir: Path, infos: list[str]
) -> None:
    h = make(bump_config(ca_dir))
    c, _, tls = bumped(h, None)  # trusts nothing: refuses fwproxy's certificate
    assert c.closed
    c.lost()
    [rec] = h.records
    assert rec.result == TCP_TUNNEL and rec.notes["fwproxy.tls"] == "rejected"
    [line] = [i for i in infos if "rejected fwproxy's certificate" in i]
    assert "127.0.0.1:" in line and "to example.com" in line and "unknown ca" in line


def test_a_leaf_that_cannot_be_made_refuses_the_tunnel(
    make: Callable[..., Harness], ca_dir: Path, infos: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # e.g. the CA expired while the proxy runs: one line and a refused tunnel (never spliced
    # undecrypted), not an exception out of dataReceived
    def expired(self: LeafCerts, name: str) -> Any:
        raise ValueError("The not valid after date must be after the not valid before date")

    monkeypatch.setattr(LeafCerts, "_build", expired)
    h = make(bump_config(ca_dir))
    c, up, tls = bumped(h, ca_dir / "ca.pem")
    assert c.closed and up.closed and up.received() == b""
    c.lost()
    [rec] = h.records
    assert (rec.status, rec.result) == (403, TCP_DENIED)
    [line] = [i for i in infos if "no certificate" in i]
    assert "example.com" in line and "not valid after" in line


def test_splice_rule_keeps_the_tunnel(make: Callable[..., Harness], ca_dir: Path) -> None:
    h = make(bump_config(ca_dir, '"splice all"'))
    c, up, tls = bumped(h, ca_dir / "ca.pem")
    assert not up.closed and up.received().startswith(b"\x16\x03")  # the ClientHello, passed on
    assert not c.closed and tls.conn.get_peer_certificate() is None  # the origin's to answer


@implementer(IRequestFilter)
class Answer:
    """Answers every request itself, keeping what it saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bytes | None]] = []

    def requestReceived(self, request: Request) -> Response:
        self.seen.append((request.method, request.url, request.credentials))
        return Response.text(200, "from the filter")


def test_filters_see_https_urls_and_the_connects_credentials(
    make: Callable[..., Harness], ca_dir: Path
) -> None:
    answer = Answer()
    h = make(bump_config(ca_dir), filters=[answer])
    c = h.connect()
    c.send(
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"
        b"Proxy-Authorization: Basic dTpw\r\n\r\n"
    )
    h.accept()
    assert c.take() == ESTABLISHED
    tls = MemoryTLSClient(c, h, ca_dir / "ca.pem", b"example.com")
    tls.pump()
    first = tls.request(b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    second = tls.request(b"POST /c HTTP/1.1\r\nHost: example.com:443\r\nContent-Length: 0\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 ") and second.startswith(b"HTTP/1.1 200 ")
    assert answer.seen[-2:] == [
        ("GET", "https://example.com/a?b=1", b"Basic dTpw"),
        ("POST", "https://example.com/c", b"Basic dTpw"),
    ]


def test_an_h2_only_client_gets_no_alpn_and_a_log_line(
    make: Callable[..., Harness], ca_dir: Path, infos: list[str]
) -> None:
    h = make(bump_config(ca_dir))
    c = h.connect()
    c.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    h.accept()
    assert c.take() == ESTABLISHED
    tls = MemoryTLSClient(c, h, ca_dir / "ca.pem", b"example.com", alpn=(b"h2",))
    tls.pump()
    assert not tls.failed and not c.closed  # no alert: the handshake completed
    assert tls.conn.get_alpn_proto_negotiated() == b""
    [line] = [i for i in infos if "offered only h2" in i]
    assert "to example.com" in line and "splice it by rule" in line
    # what an h2 client then sends is no HTTP/1.1 request: an error answer, not a hang
    answer = tls.request(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 4"), answer


def test_a_client_leaving_during_the_handshake_is_incomplete(
    make: Callable[..., Harness], ca_dir: Path, infos: list[str]
) -> None:
    h = make(bump_config(ca_dir))
    c = h.connect()
    c.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    h.accept()
    assert c.take() == ESTABLISHED
    tls = MemoryTLSClient(c, h, ca_dir / "ca.pem", b"example.com")
    try:
        tls.conn.do_handshake()
    except SSL.WantReadError:
        pass
    c.send(tls.conn.bio_read(65536))  # the ClientHello only, then the client goes away
    h.clock.advance(0)
    c.lost()
    [rec] = h.records
    assert rec.notes["fwproxy.tls"] == "incomplete"
    assert any("did not complete the TLS handshake" in i for i in infos)


def test_a_half_close_after_a_request_still_gets_the_answer(
    make: Callable[..., Harness], ca_dir: Path
) -> None:
    h = make(bump_config(ca_dir), filters=[Answer()])
    c, _, tls = bumped(h, ca_dir / "ca.pem")
    tls.conn.sendall(b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n")
    c.send(tls.conn.bio_read(65536))
    c.shutdown_write()  # FIN after the request (no close_notify)
    tls.pump()
    assert tls.conn.recv(65536).startswith(b"HTTP/1.1 200 ")
    assert c.closed  # then the proxy closes: nothing more can come
    c.lost()
    assert [r.method for r in h.records] == ["GET", "CONNECT"]


# -- drain (SIGTERM): an intercepted connection closes as a plain keep-alive one -------------


def closed_by_proxy(tls: MemoryTLSClient) -> bool:
    """The proxy sent its close_notify: the client reads the end of the TLS stream."""
    tls.pump()
    try:
        tls.conn.recv(65536)
    except SSL.ZeroReturnError:
        return True
    except SSL.WantReadError:
        return False
    return False


def test_drain_closes_an_idle_intercepted_connection_at_once(
    make: Callable[..., Harness], ca_dir: Path
) -> None:
    h = make(bump_config(ca_dir), filters=[Answer()])
    c, _, tls = bumped(h, ca_dir / "ca.pem")
    assert tls.request(b"GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n").startswith(b"HTTP/1.1 200")
    drained: list[object] = []
    h.factory.drain(60).addCallback(drained.append)
    assert closed_by_proxy(tls)
    tls.conn.shutdown()  # the client answers the close_notify: the proxy closes the TCP
    tls.pump()
    assert c.closed
    c.lost()
    assert drained == [None]  # at once, not at the drain timeout
    assert [r.method for r in h.records] == ["GET", "CONNECT"]


@implementer(IRequestFilter)
class Held:
    """Holds every request until :meth:`release` (a request in flight)."""

    def __init__(self) -> None:
        self.pending: list[Deferred[Response | None]] = []

    def requestReceived(self, request: Request) -> Deferred[Response | None]:
        d: Deferred[Response | None] = Deferred()
        self.pending.append(d)
        return d

    def release(self) -> None:
        for d in self.pending:
            d.callback(Response.text(200, "late answer"))


def test_drain_finishes_the_request_in_flight_then_closes(
    make: Callable[..., Harness], ca_dir: Path
) -> None:
    held = Held()
    h = make(bump_config(ca_dir), filters=[held])
    c, _, tls = bumped(h, ca_dir / "ca.pem")
    assert tls.request(b"GET /slow HTTP/1.1\r\nHost: example.com\r\n\r\n") == b""
    drained: list[object] = []
    h.factory.drain(60).addCallback(drained.append)
    h.clock.advance(1)
    assert not closed_by_proxy(tls) and not c.closed and held.pending
    held.release()
    tls.pump()
    answer = tls.conn.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"late answer\n"), answer
    assert closed_by_proxy(tls)  # then closed, at the request boundary
    c.lost()
    assert drained == [None]
    assert [(r.method, r.status) for r in h.records] == [("GET", 200), ("CONNECT", 200)]


def test_an_intercepted_connection_counts_once(make: Callable[..., Harness], ca_dir: Path) -> None:
    """The connection inside the TLS is not counted again: neither against
    ``limits.max_connections`` nor in the connections gauge."""
    h = make(bump_config(ca_dir) + "[limits]\nmax_connections = 2\n", filters=[Answer()])
    c, _, tls = bumped(h, ca_dir / "ca.pem")
    assert tls.request(b"GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n").startswith(b"HTTP/1.1 200")
    assert h.factory.connections == {c.proto}
    gauges = {m.name: m.samples[0].value for m in h.factory.metrics.families() if m.type == "gauge"}
    # one connection, a tunnel
    assert gauges == {"fwproxy_active_connections": 1, "fwproxy_active_tunnels": 1}
    other = h.connect()
    other.send(b"GET http://example.net/ HTTP/1.1\r\nHost: example.net\r\n\r\n")
    assert not other.received().startswith(b"HTTP/1.1 503")


# -- a CONNECT to an IP address with a server name: the name is the origin's ----------------


@pytest.fixture(scope="module")
def origin_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[CA, Path]:
    ca = CA("origin CA")
    return ca, ca.write(tmp_path_factory.mktemp("origin-trust"), "origin-ca")


def connect_ip_with_sni(
    make: Callable[..., Harness], ca_dir: Path, trust: Path, sni: bytes
) -> tuple[Harness, Client, MemoryTLSClient]:
    config = bump_config(ca_dir) + f'[tls]\nca_file = "{trust}"\n'
    h = make(config, filters=[], resolver=FakeResolver({}))  # no name resolves
    c = h.connect()
    c.send(b"CONNECT 192.0.2.10:443 HTTP/1.1\r\nHost: 192.0.2.10:443\r\n\r\n")
    h.accept()
    assert c.take() == ESTABLISHED
    tls = MemoryTLSClient(c, h, ca_dir / "ca.pem", sni)
    tls.pump()
    return h, c, tls


def test_connect_to_an_ip_is_verified_against_the_server_name(
    make: Callable[..., Harness], ca_dir: Path, origin_ca: tuple[CA, Path]
) -> None:
    ca, trust = origin_ca
    h, c, tls = connect_ip_with_sni(make, ca_dir, trust, b"named.test")
    tls.conn.sendall(b"GET /p HTTP/1.1\r\nHost: named.test\r\n\r\n")
    tls.pump()
    # to the CONNECT's address (the name is not looked up), presenting the server name
    assert h.attempts[-1][:2] == ("192.0.2.10", 443)
    server = MemoryTLSServer(h.accept(), ca.issue("named.test"), h.clock)
    assert server.server_name == b"named.test"
    assert server.received.startswith(b"GET /p HTTP/1.1\r\n")
    assert b"\r\nHost: named.test\r\n" in server.received
    server.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    tls.pump()
    assert tls.conn.recv(65536).endswith(b"\r\n\r\nok")
    assert h.records[-1].target == "https://named.test/p"


def test_connect_to_an_ip_refuses_an_origin_not_certified_for_the_server_name(
    make: Callable[..., Harness], ca_dir: Path, origin_ca: tuple[CA, Path]
) -> None:
    ca, trust = origin_ca
    # a certificate for the IP address itself does not do: the client asked for the name
    h, c, tls = connect_ip_with_sni(make, ca_dir, trust, b"named.test")
    tls.conn.sendall(b"GET /p HTTP/1.1\r\nHost: 192.0.2.10\r\n\r\n")
    tls.pump()
    server = MemoryTLSServer(h.accept(), ca.issue("192.0.2.10", "other.test"), h.clock)
    tls.pump()
    answer = tls.conn.recv(65536)
    assert answer.startswith(b"HTTP/1.1 502 "), answer
    assert b"hostname mismatch" in answer and b"not named.test" in answer
    assert server.received == b""
    h.take_failures()


def test_misdirected_inside_an_ip_tunnel_names_the_server_name(
    make: Callable[..., Harness], ca_dir: Path, origin_ca: tuple[CA, Path]
) -> None:
    h, c, tls = connect_ip_with_sni(make, ca_dir, origin_ca[1], b"named.test")
    answer = tls.request(b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 421 "), answer
    assert b"goes to named.test:443, not to other.test" in answer


def test_the_binding_of_an_ip_connect_with_a_server_name() -> None:
    it = Interception("192.0.2.10", 443, "named.test", None)
    assert it.prefix == b"https://named.test" and it.address == "192.0.2.10"
    assert it.names("named.test", None) and it.names("192.0.2.10", 443)
    plain = Interception("192.0.2.10", 8443, "", None)
    assert plain.prefix == b"https://192.0.2.10:8443" and plain.address is None
    named = Interception("example.com", 443, "example.com", None)
    assert named.prefix == b"https://example.com" and named.address is None


# -- to_self in [intercept] rules; ECH --------------------------------------------------------


def test_to_self_in_intercept_rules_sees_the_listening_addresses(
    make: Callable[..., Harness], ca_dir: Path
) -> None:
    h = make(bump_config(ca_dir, '"splice to_self", "bump all"'))
    h.factory.listening.append(("127.0.0.7", 3128))  # as a listening port records itself
    c = h.connect()
    c.send(b"CONNECT 127.0.0.7:443 HTTP/1.1\r\nHost: 127.0.0.7:443\r\n\r\n")
    up = h.accept()
    assert c.take() == ESTABLISHED
    tls = MemoryTLSClient(c, h, ca_dir / "ca.pem", b"example.com")
    tls.pump()
    assert not up.closed and up.received().startswith(b"\x16\x03")  # spliced: the proxy's host
    # elsewhere, the same rules bump
    _, other_up, _ = bumped(h, ca_dir / "ca.pem")
    assert other_up.closed


def test_ech_splices_a_tunnel_the_rules_would_bump_and_says_so(
    make: Callable[..., Harness], ca_dir: Path, infos: list[str]
) -> None:
    h = make(bump_config(ca_dir))
    c = h.connect()
    c.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    up = h.accept()
    assert c.take() == ESTABLISHED
    hello = crafted_hello("public.provider.test", ech=True)
    c.send(hello)
    assert not up.closed and up.received() == hello  # spliced
    [line] = [i for i in infos if "spliced, not bumped" in i]
    assert "'bump all'" in line and "ECH" in line and "to example.com:443" in line


def test_a_client_answering_the_close_with_a_fin_is_closed(
    make: Callable[..., Harness], ca_dir: Path
) -> None:
    """After the proxy's close_notify, a client that shuts down its side without a
    close_notify of its own (Python's ssl, many others) has the connection closed."""
    h = make(bump_config(ca_dir), filters=[Answer()])
    c, _, tls = bumped(h, ca_dir / "ca.pem")
    answer = tls.request(b"GET /a HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert closed_by_proxy(tls) and not c.closed
    c.shutdown_write()
    assert c.closed
