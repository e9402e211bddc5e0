"""``GET https://`` relayed over TLS the proxy originates and verifies (fwproxy.origination), in
memory: real TLS (OpenSSL on both sides, certificates made here) over the harness's transports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.certs import CA, Leaf, MemoryTLSServer
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOProtocol

from fwproxy.config import ConfigError, loads
from fwproxy.destination import TLS_ERROR
from fwproxy.origination import (
    Origination,
    TLSFailed,
    TrustStoreError,
    load_certificates,
    system_certificates,
)
from fwproxy.record import TCP_DENIED, TCP_MISS
from fwproxy.testing import BASE_CONFIG, OK5, ORIGIN_IP, Harness, get, split_response, status_of
from fwproxy.upstream import UpstreamProtocol


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA()


@pytest.fixture(scope="module")
def leaf(ca: CA) -> Leaf:
    return ca.issue("example.com")


@pytest.fixture
def ca_file(ca: CA, tmp_path: Path) -> Path:
    return ca.write(tmp_path)


def tls_config(ca_file: Path, extra: str = "") -> str:
    return BASE_CONFIG + f'\n[tls]\nca_file = "{ca_file}"\n' + extra


@pytest.fixture
def hs(make: Callable[..., Harness], ca_file: Path) -> Harness:
    """A harness trusting the test CA upstream."""
    return make(tls_config(ca_file))


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    """The text of every warning logged during the test."""
    found: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") is not None and event["log_level"].name == "warn":
            from twisted.logger import formatEvent

            found.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield found
    globalLogPublisher.removeObserver(observe)


def https_get(h: Harness, url: bytes = b"https://example.com/a?b=c", leaf: Leaf | None = None):
    """A client whose ``GET url`` reached a new upstream connection, and the TLS server there."""
    c = h.connect()
    c.send(get(url))
    up = h.accept()
    assert isinstance(up.proto, TLSMemoryBIOProtocol), "the upstream connection is not TLS"
    assert leaf is not None
    return c, up, MemoryTLSServer(up, leaf, h.clock)


# -- verified TLS ----------------------------------------------------------------------------


def test_https_target_is_relayed_over_verified_tls(hs: Harness, leaf: Leaf) -> None:
    c, up, server = https_get(hs, leaf=leaf)
    assert (up.host, up.port) == (ORIGIN_IP, 443)
    assert server.received == b"GET /a?b=c HTTP/1.1\r\nHost: example.com\r\n\r\n"
    assert server.server_name == b"example.com"
    assert server.alpn == b"http/1.1"
    assert up.take() == b"" and c.received() == b""  # nothing in the clear, nothing answered
    server.send(OK5)
    assert c.take() == OK5
    [rec] = hs.records
    assert (rec.status, rec.result, rec.upstream) == (200, TCP_MISS, f"{ORIGIN_IP}:443")
    assert rec.target == "https://example.com/a?b=c"
    assert TLS_ERROR not in rec.notes


def test_explicit_port_and_ip_literal(make: Callable[..., Harness], ca: CA, ca_file: Path) -> None:
    h = make(tls_config(ca_file))
    c, up, server = https_get(h, b"https://127.0.0.9:8443/", ca.issue("127.0.0.9"))
    assert (up.host, up.port) == ("127.0.0.9", 8443)
    assert server.server_name is None  # no SNI for an IP address
    assert server.received.startswith(b"GET / HTTP/1.1\r\nHost: 127.0.0.9:8443\r\n")
    server.send(OK5)
    assert c.take() == OK5


def test_request_sent_before_the_handshake_waits_for_it(hs: Harness, leaf: Leaf) -> None:
    """The relay writes the head only once the certificate is verified: the connection counts
    as made when the handshake has completed."""
    c = hs.connect()
    c.send(get(b"https://example.com/"))
    up = hs.accept()
    hello = up.received()
    assert hello[:1] == b"\x16"  # a TLS handshake record: the ClientHello, nothing else
    assert b"GET" not in hello
    server = MemoryTLSServer.__new__(MemoryTLSServer)
    MemoryTLSServer.__init__(server, up, leaf, hs.clock)
    assert server.received.startswith(b"GET / HTTP/1.1\r\n")


# -- verification failures: 502 naming the reason, never plain text ---------------------------


def failed(h: Harness, c: Any, server: MemoryTLSServer) -> str:
    """The 502's body; checks that nothing of the request reached the server."""
    assert server.received == b""
    status, _, body = split_response(c.received())
    assert status.startswith(b"HTTP/1.1 502 ")
    [rec] = h.records
    assert rec.status == 502 and rec.result == TCP_MISS
    assert rec.notes[TLS_ERROR] in body.decode()
    return body.decode()


def test_hostname_mismatch_is_502_naming_it(hs: Harness, ca: CA, warnings: list[str]) -> None:
    c, up, server = https_get(hs, leaf=ca.issue("other.test", "*.other.test"))
    body = failed(hs, c, server)
    assert body == (
        "fwproxy: TLS to example.com:443 failed: certificate verify failed: hostname mismatch: "
        "the certificate is for other.test, *.other.test, not example.com\n"
    )
    assert up.gone
    assert hs.factory.pool.idle_count() == 0
    [line] = [w for w in warnings if "TLS to example.com:443" in w]
    assert "127.0.0.1 GET https://example.com/a?b=c" in line and "hostname mismatch" in line


def test_unknown_ca_is_502_naming_it(make: Callable[..., Harness], tmp_path: Path) -> None:
    other = CA("another CA")
    h = make(tls_config(other.write(tmp_path, "other")))
    c, up, server = https_get(h, leaf=CA("the origin's CA").issue("example.com"))
    body = failed(h, c, server)
    assert "certificate verify failed: unable to get local issuer certificate" in body
    assert "CN=example.com" in body and str(tmp_path / "other.crt") in body


def test_system_trust_store_does_not_know_a_private_ca(
    make: Callable[..., Harness], leaf: Leaf
) -> None:
    h = make(BASE_CONFIG)  # no [tls] ca_file: the system's trust store
    c, up, server = https_get(h, leaf=leaf)
    body = failed(h, c, server)
    assert "unable to get local issuer certificate" in body
    assert "the system trust store" in body


def test_expired_certificate_is_502_naming_it(hs: Harness, ca: CA) -> None:
    c, up, server = https_get(hs, leaf=ca.issue("example.com", expired=True))
    assert "certificate verify failed: certificate has expired" in failed(hs, c, server)


def test_plain_http_on_the_tls_port_is_not_a_downgrade(hs: Harness) -> None:
    c = hs.connect()
    c.send(get(b"https://example.com/"))
    up = hs.accept()
    up.take()
    up.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    assert up.closed
    up.lost()
    status, _, body = split_response(c.received())
    assert b" 502 " in status
    assert body.startswith(b"fwproxy: TLS to example.com:443 failed: TLS handshake failed: ")


def test_server_closing_during_the_handshake_is_502(hs: Harness) -> None:
    c = hs.connect()
    c.send(get(b"https://example.com/"))
    up = hs.accept()
    up.lost()
    assert status_of(c.received()) == 502
    assert b"TLS handshake failed" in c.received()


def test_handshake_that_never_completes_times_out(hs: Harness) -> None:
    c = hs.connect()
    c.send(get(b"https://example.com/"))
    up = hs.accept()
    hs.clock.advance(hs.config.timeouts.connect)
    assert status_of(c.received()) == 504
    assert up.closed  # the half-made TLS connection is dropped
    up.lost()
    assert hs.factory.pool._open == {}


def test_client_leaving_during_the_handshake_drops_it(hs: Harness) -> None:
    c = hs.connect()
    c.send(get(b"https://example.com/"))
    up = hs.accept()
    c.lost()
    assert up.closed
    up.lost()
    assert hs.factory.pool._open == {} and hs.factory.pool.idle_count() == 0


# -- the pool keys on the scheme ---------------------------------------------------------------


def test_https_connections_are_pooled_and_reused(hs: Harness, leaf: Leaf) -> None:
    c, up, server = https_get(hs, leaf=leaf)
    server.send(OK5)
    assert c.take() == OK5
    assert hs.factory.pool.idle_count(("https", "example.com", 443)) == 1
    c.send(get(b"https://example.com/second"))
    server.pump()
    assert len(hs.attempts) == 1  # the same TLS connection
    assert server.received.endswith(b"GET /second HTTP/1.1\r\nHost: example.com\r\n\r\n")
    server.send(OK5)
    assert c.take() == OK5
    assert [r.status for r in hs.records] == [200, 200]


def test_http_and_https_to_one_host_and_port_are_not_mixed(hs: Harness, leaf: Leaf) -> None:
    # a plain connection to example.com:443, kept idle
    c = hs.connect()
    c.send(get(b"http://example.com:443/plain"))
    plain = hs.accept()
    assert isinstance(plain.proto, UpstreamProtocol)
    assert plain.take().startswith(b"GET /plain HTTP/1.1\r\n")
    plain.send(OK5)
    assert hs.factory.pool.idle_count(("http", "example.com", 443)) == 1
    # https to the same host and port: a new, TLS connection
    c.send(get(b"https://example.com:443/secure"))
    assert len(hs.attempts) == 2
    up = hs.accept()
    server = MemoryTLSServer(up, leaf, hs.clock)
    assert server.received.startswith(b"GET /secure HTTP/1.1\r\n")
    assert plain.take() == b""
    server.send(OK5)
    # and back: http again takes the plain one, not the TLS one
    c.send(get(b"http://example.com:443/again"))
    assert len(hs.attempts) == 2
    assert plain.take().startswith(b"GET /again HTTP/1.1\r\n")
    assert hs.factory.pool.idle_count(("https", "example.com", 443)) == 1


# -- access rules see the request as the client sent it ----------------------------------------


def test_access_rules_see_https_urls_and_port_443(
    make: Callable[..., Harness], ca_file: Path
) -> None:
    extra = """
[acl.secure]
url_regex = ["^https://example[.]com/"]
[acl.https_port]
port = [443]
"""
    config = tls_config(ca_file, extra).replace(
        '"allow localhost"', '"deny secure", "allow localhost"'
    )
    h = make(config)
    c = h.connect()
    c.send(get(b"https://example.com/x"))
    assert status_of(c.received()) == 403 and h.attempts == []
    assert h.records[0].result == TCP_DENIED
    h2 = make(
        tls_config(ca_file, extra).replace('"allow localhost"', '"deny https_port", "allow all"')
    )
    c = h2.connect()
    c.send(get(b"https://other.test/x"))
    assert status_of(c.received()) == 403 and h2.attempts == []


# -- Origination on its own --------------------------------------------------------------------


def test_creators_are_cached_per_host_name(ca_file: Path) -> None:
    o = Origination(MemoryReactorClock(), str(ca_file), cache_size=2)
    a = o.creator("a.test")
    assert o.creator("a.test") is a
    b = o.creator("b.test")
    o.creator("a.test")  # a is now the most recently used
    o.creator("c.test")  # b goes
    assert o.creator("a.test") is a
    assert o.creator("b.test") is not b


def test_the_trust_store_is_read_once_and_shared_by_every_host(ca_file: Path) -> None:
    o = Origination(MemoryReactorClock(), str(ca_file))
    trust = o.trust_root()
    assert o.trust_root() is trust
    ca_file.unlink()  # read once: later host names do not read it again
    o.creator("a.test")
    o.creator("b.test")


def test_the_system_trust_store_is_the_default_ca_file(
    make: Callable[..., Harness], ca: CA, leaf: Leaf, ca_file: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # how OpenSSL is told of another one
    assert [c.subject for c in system_certificates() or []] == [ca.cert.subject]
    h = make(BASE_CONFIG)  # no [tls] ca_file
    c, up, server = https_get(h, leaf=leaf)
    server.send(OK5)
    assert c.take() == OK5


def test_tls_failed_is_an_exception_with_its_reason() -> None:
    assert str(TLSFailed("certificate verify failed: x")) == "certificate verify failed: x"


@pytest.mark.parametrize(
    "content, problem",
    [
        (None, "cannot read"),
        (b"not a certificate\n", "holds no PEM certificate"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a valid PEM"),
    ],
)
def test_unusable_ca_files(tmp_path: Path, content: bytes | None, problem: str) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TrustStoreError) as e:
        load_certificates(str(path))
    assert problem in str(e.value) and str(path) in str(e.value)


def test_a_bundle_of_several_cas(tmp_path: Path) -> None:
    one, two = CA("one"), CA("two")
    path = tmp_path / "bundle.pem"
    path.write_bytes(one.cert_pem + b"\n" + two.cert_pem)
    assert [c.subject for c in load_certificates(str(path))] == [one.cert.subject, two.cert.subject]


# -- configuration -----------------------------------------------------------------------------


def test_ca_file_is_relative_to_the_configuration_file(tmp_path: Path, ca: CA) -> None:
    ca.write(tmp_path, "upstream-ca")
    config = loads('[tls]\nca_file = "upstream-ca.crt"\n', str(tmp_path / "fwproxy.toml"))
    assert config.tls.ca_file == str(tmp_path / "upstream-ca.crt")
    assert loads("").tls.ca_file is None


@pytest.mark.parametrize(
    "value, problem",
    [
        ('"missing.pem"', "tls.ca_file: cannot read {dir}/missing.pem: No such file or directory"),
        (
            '"empty.pem"',
            "tls.ca_file: {dir}/empty.pem holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ),
        ("3", "tls.ca_file: expected the path of a PEM file of CA certificates"),
        ('""', "tls.ca_file: expected the path of a PEM file of CA certificates"),
    ],
)
def test_bad_ca_file_is_one_line_naming_it(tmp_path: Path, value: str, problem: str) -> None:
    (tmp_path / "empty.pem").write_text("")
    source = str(tmp_path / "f.toml")
    with pytest.raises(ConfigError) as e:
        loads(f"[proxy]\nlisten = ['tcp:3128']\n\n[tls]\nca_file = {value}\n", source)
    assert e.value.problems == [f"{source}:5: " + problem.format(dir=tmp_path)]


def test_unknown_tls_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        loads("[tls]\ncafile = 'x'\n", "f.toml")
    [line] = e.value.problems
    assert line.startswith("f.toml:2: tls.cafile: unknown key (known: ") and "ca_file)" in line
