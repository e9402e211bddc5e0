"""Who may send a PROXY-protocol header (``[proxy] proxy_protocol_from``, fwproxy.proxyheader):
the sender list and its log without sockets, the configuration key, a ``haproxy:`` listener's
connection on a ``StringTransport``, and one real ``haproxy:tcp:`` listener on loopback (an
allowed peer on 127.0.0.1, a refused one on 127.0.0.2)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from support.proxyproc import ProxyLauncher, free_port
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher

from fwproxy.config import ConfigError, loads
from fwproxy.factory import ProxyFactory
from fwproxy.metrics import registry_of
from fwproxy.proxyheader import LOG_INTERVAL, HeaderSenders, SenderLog, parse_senders

HEADER = b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 3130\r\n"


def senders(*networks: str) -> HeaderSenders:
    parsed, problems = parse_senders(networks)
    assert problems == []
    return parsed


# -- the list ----------------------------------------------------------------------------------


def test_networks_and_addresses_match_their_peers() -> None:
    s = senders("10.0.0.0/24", "192.0.2.9", "2001:db8::/32")
    assert s.allows("10.0.0.200") and s.allows("192.0.2.9") and s.allows("2001:db8::1")
    assert not s.allows("10.0.1.1") and not s.allows("192.0.2.10") and not s.allows("::1")
    # a tcp6 listener sees IPv4 peers as mapped addresses
    assert s.allows("::ffff:10.0.0.3") and not s.allows("::ffff:10.0.1.3")
    # a UNIX socket's peer, or nothing, is no address
    assert not s.allows("") and not s.allows("/run/fwproxy.sock")


def test_an_empty_list_lets_no_peer_send_a_header() -> None:
    assert not HeaderSenders().allows("127.0.0.1")


def test_bad_entries_are_named_by_index() -> None:
    _, problems = parse_senders(["10.0.0.0/8", "10.0.0.0/33", 7, "balancer"])
    assert [i for i, _ in problems] == [1, 2, 3]
    assert "'10.0.0.0/33' is not a network" in problems[0][1]
    assert "got 7" in problems[1][1]


def test_refusals_are_counted_and_logged_once_per_peer_per_minute(
    caplog_events: list[dict[str, Any]],
) -> None:
    clock = Clock()
    log = SenderLog(clock)
    allowed = senders("10.0.0.0/24")
    assert log.check(None, "203.0.113.1")  # the key absent: anyone may
    assert log.check(allowed, "10.0.0.1")
    assert not log.check(allowed, "203.0.113.1")
    assert not log.check(allowed, "203.0.113.1")
    assert not log.check(allowed, "203.0.113.2")
    assert log.refused == 3
    assert [e["peer"] for e in caplog_events] == ["203.0.113.1", "203.0.113.2"]
    clock.advance(LOG_INTERVAL)
    assert not log.check(allowed, "203.0.113.1")
    assert [e["peer"] for e in caplog_events][-1] == "203.0.113.1" and len(caplog_events) == 3
    assert caplog_events[-1]["n"] == 4


@pytest.fixture
def caplog_events() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if "peer" in event:
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


# -- the configuration key ---------------------------------------------------------------------


def test_the_key_is_parsed() -> None:
    config = loads('[proxy]\nlisten = ["haproxy:tcp:3130"]\nproxy_protocol_from = ["10.0.0.0/8"]\n')
    assert config.proxy_protocol_from == senders("10.0.0.0/8")
    assert not [w for w in config.warnings if "PROXY header" in w]
    assert loads("[proxy]\nproxy_protocol_from = []\n").proxy_protocol_from == HeaderSenders()


def test_a_haproxy_listener_without_the_key_takes_any_peer_with_a_warning() -> None:
    config = loads('[proxy]\nlisten = ["tcp:3128", "haproxy:tcp:3130"]\n', "f.toml")
    assert config.proxy_protocol_from is None
    assert [w for w in config.warnings if "PROXY header" in w] == [
        "f.toml: proxy.listen: 'haproxy:tcp:3130' accepts a PROXY header from any peer, which "
        "may then claim any client address: set proxy.proxy_protocol_from (the balancers' "
        "networks)"
    ]
    plain = loads('[proxy]\nlisten = ["tcp:3128"]\n')
    assert not [w for w in plain.warnings if "PROXY header" in w]
    # --listen on the command line (the ECS task's) warns too
    [w] = [w for w in plain.with_listen(["haproxy:tcp:3128"]).warnings if "PROXY header" in w]
    assert w.startswith("--listen 'haproxy:tcp:3128' accepts a PROXY header from any peer")
    listed = loads("[proxy]\nproxy_protocol_from = []\n").with_listen(["haproxy:tcp:3128"])
    assert not [w for w in listed.warnings if "PROXY header" in w]


def test_bad_values_are_reported_with_file_and_line() -> None:
    text = '[proxy]\nlisten = ["haproxy:tcp:3130"]\nproxy_protocol_from = ["10.0.0.0/8", "lb"]\n'
    with pytest.raises(ConfigError) as e:
        loads(text, "f.toml")
    assert e.value.problems == [
        "f.toml:3: proxy.proxy_protocol_from: 'lb' is not a network like \"10.0.0.0/24\" or an "
        "address"
    ]
    with pytest.raises(ConfigError) as e:
        loads('[proxy]\n\nproxy_protocol_from = "10.0.0.0/8"\n', "f.toml")
    assert e.value.problems[0].startswith("f.toml:3: proxy.proxy_protocol_from: expected a list")


# -- a haproxy: listener's connection, without sockets ----------------------------------------


def connect(config_text: str, peer: str) -> tuple[Any, StringTransport, ProxyFactory]:
    """A connection from ``peer`` to a ``haproxy:tcp:`` listener of a proxy on ``config_text``:
    Twisted's PROXY wrapper around fwproxy's protocol, on a ``StringTransport``."""
    reactor = MemoryReactorClock()
    factory = ProxyFactory(loads(config_text), reactor, filters=[])
    serverFromString(reactor, "haproxy:tcp:3130").listen(factory)
    wrapping = reactor.tcpServers[-1][1]
    address = IPv4Address("TCP", peer, 40000)
    wrapper = wrapping.buildProtocol(address)
    transport = StringTransport(peerAddress=address, hostAddress=IPv4Address("TCP", peer, 3130))
    wrapper.makeConnection(transport)
    return wrapper, transport, factory


FROM_LOOPBACK = '[proxy]\nlisten = ["haproxy:tcp:3130"]\nproxy_protocol_from = ["127.0.0.1"]\n'


def test_an_allowed_peers_header_names_the_client() -> None:
    wrapper, transport, factory = connect(FROM_LOOPBACK, "127.0.0.1")
    assert not transport.disconnecting and len(factory.connections) == 1
    wrapper.dataReceived(HEADER + b"GET /healthz HTTP/1.1\r\nHost: fwproxy\r\n\r\n")
    assert wrapper.wrappedProtocol.client == ("192.0.2.7", 5555)
    assert transport.value().startswith(b"HTTP/1.1 200 ")


def test_a_peer_not_listed_is_closed_before_anything_is_read() -> None:
    wrapper, transport, factory = connect(FROM_LOOPBACK, "127.0.0.2")
    assert transport.disconnecting and transport.disconnected  # aborted
    assert transport.value() == b"" and not factory.connections
    assert factory.admission.senders.refused == 1
    wrapper.connectionLost(None)
    assert not factory.connections


def test_refused_peers_are_counted_on_the_metrics_page() -> None:
    _, _, factory = connect(FROM_LOOPBACK, "127.0.0.2")
    connect(FROM_LOOPBACK, "127.0.0.1")  # another proxy: its count is its own
    text = generate_latest(registry_of(factory.metrics)).decode()
    assert "fwproxy_proxy_header_refused_total 1.0" in text.splitlines()


def test_an_empty_list_closes_every_peer_and_no_key_closes_none() -> None:
    _, transport, _ = connect("[proxy]\nproxy_protocol_from = []\n", "127.0.0.1")
    assert transport.disconnecting
    _, transport, _ = connect("", "203.0.113.5")
    assert not transport.disconnecting


def test_a_reload_changes_who_may_send() -> None:
    wrapper, transport, factory = connect(FROM_LOOPBACK, "127.0.0.1")
    factory.reconfigure(loads("[proxy]\nproxy_protocol_from = []\n"))
    address = IPv4Address("TCP", "127.0.0.1", 40001)
    again = StringTransport(peerAddress=address)
    factory_wrapper = wrapper.factory.buildProtocol(address)
    factory_wrapper.makeConnection(again)
    assert again.disconnecting and not transport.disconnecting


# -- a real haproxy:tcp: listener on loopback --------------------------------------------------


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[ProxyLauncher]:
    launcher = ProxyLauncher(tmp_path)
    yield launcher
    launcher.stop_all()


def exchange(port: int, source: str, data: bytes) -> bytes:
    """Connect from ``source`` to 127.0.0.1:``port``, send ``data``, read until closed (a
    reset, even one that beats ``connect()`` back, ends it too: a refused peer is aborted)."""
    got = b""
    with socket.socket() as s:
        s.settimeout(5)
        s.bind((source, 0))
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(data)
            while chunk := s.recv(65536):
                got += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
        return got


@pytest.mark.slow
def test_a_real_listener_honours_the_listed_peer_and_closes_another(
    launcher: ProxyLauncher, tmp_path: Path
) -> None:
    port = free_port()
    access = tmp_path / "access.log"
    config = (
        f'[proxy]\nlisten = ["haproxy:tcp:{port}:interface=127.0.0.1"]\n'
        'proxy_protocol_from = ["127.0.0.1/32"]\n'
        '[acl]\nclients = {src = ["192.0.2.0/24"]}\n'
        '[access]\nrules = ["deny clients", "deny all"]\n'
        f'[log]\naccess = "{access}"\n'
    )
    # wait for the log line, not by connecting: a probe would be a headerless connection
    proxy = launcher.spawn(1, config, host="127.0.0.1", port=port, access_log=access, wait=False)
    proxy.wait_output("fwproxy listening on")
    request = b"GET http://192.0.2.200/ HTTP/1.1\r\nHost: 192.0.2.200\r\nConnection: close\r\n\r\n"
    answer = exchange(port, "127.0.0.1", HEADER + request)
    assert answer.startswith(b"HTTP/1.1 403 "), answer[:200]
    assert " 192.0.2.7 " in f" {proxy.access_line_for('192.0.2.200')} "
    assert exchange(port, "127.0.0.2", HEADER + request) == b""
    proxy.wait_output(r"closed a connection from 127\.0\.0\.2 to a haproxy: listener")
    assert "192.0.2.7" not in "".join(proxy.access_lines(1)[1:])
    proxy.assert_clean_log()
