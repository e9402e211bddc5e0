"""fwproxy.twisted_private against the installed Twisted: every private attribute it relies on
is still there and still means what it did, and each public fallback gives the same answers.

A failure here after a Twisted upgrade names the attribute, the Twisted version, and what fwproxy
does without it."""

from __future__ import annotations

import importlib
import signal
import socket
from collections.abc import Iterator

import pytest
from twisted.copyright import version as twisted_version
from twisted.internet import interfaces, tcp
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.selectreactor import SelectReactor
from twisted.internet.testing import MemoryReactor

from fwproxy import twisted_private
from fwproxy.twisted_private import (
    TCPListenArgs,
    endpoint_port,
    forget_exit_signal,
    idle_socket,
    recorded_endpoint_port,
    recorded_tcp_listen_args,
    tcp_listen_args,
)


def _gone(where: str, name: str, consequence: str) -> str:
    return (
        f"Twisted {twisted_version}: {where} has no attribute {name!r} any more; "
        f"fwproxy.twisted_private relies on it ({consequence}). Update fwproxy/twisted_private.py."
    )


@pytest.fixture
def server() -> Iterator[tuple[tcp.Server, socket.socket]]:
    """A real ``tcp.Server`` transport on one end of a socket pair (no network), driven by a
    MemoryReactor, and the socket at the other end."""
    ours, peer = socket.socketpair()
    peer.settimeout(5)
    transport = tcp.Server(ours, Protocol(), ("127.0.0.1", 1), None, 1, MemoryReactor())
    yield transport, peer
    ours.close()
    peer.close()


# -- idle_socket (fwproxy.writes) ---------------------------------------------------------------


@pytest.mark.parametrize("name", twisted_private.TCP_WRITE_ATTRIBUTES)
def test_tcp_transport_still_has(server, name: str) -> None:
    transport, _ = server
    assert hasattr(transport, name), _gone(
        "tcp.Server", name, "without it writes.write always goes through transport.write, slower"
    )


def test_idle_transport_gives_its_socket(server) -> None:
    transport, _ = server
    assert idle_socket(transport) is transport.socket, (
        f"Twisted {twisted_version}: an idle tcp.Server is no longer recognised as idle: "
        "one of twisted_private.TCP_WRITE_ATTRIBUTES changed meaning"
    )


def test_transport_with_queued_bytes_is_not_idle(server) -> None:
    transport, _ = server
    transport.write(b"queued")  # buffered until the reactor finds the socket writable
    assert idle_socket(transport) is None, (
        f"Twisted {twisted_version}: bytes queued by transport.write are no longer in "
        "_tempDataBuffer/dataBuffer: a direct send would overtake them"
    )
    transport.doWrite()  # what the reactor does: now everything has been sent
    assert idle_socket(transport) is transport.socket


def test_half_closed_or_closing_transport_is_not_idle(server) -> None:
    transport, _ = server
    transport.loseWriteConnection()
    assert idle_socket(transport) is None


def test_other_transports_and_missing_attributes_mean_no_direct_send(server) -> None:
    transport, _ = server

    class Subclass(tcp.Server):
        pass

    other = Subclass.__new__(Subclass)
    assert idle_socket(other) is None  # exact classes only
    assert idle_socket(object()) is None
    del transport._tempDataBuffer  # as if Twisted renamed it: fall back, never raise
    assert idle_socket(transport) is None


# -- tcp_listen_args (fwproxy.reuseport) --------------------------------------------------------


@pytest.mark.parametrize("description", ["tcp:3128", r"tcp6:3128:interface=\:\:1"])
@pytest.mark.parametrize("name", twisted_private.TCP_ENDPOINT_ATTRIBUTES)
def test_tcp_endpoint_still_has(description: str, name: str) -> None:
    endpoint = serverFromString(MemoryReactor(), description)
    assert hasattr(endpoint, name), _gone(
        type(endpoint).__name__, name, "tcp_listen_args falls back to a MemoryReactor's record"
    )


LISTEN_CASES = {
    "tcp:3128": TCPListenArgs(False, 3128, 50, ""),
    "tcp:8080:interface=127.0.0.1:backlog=7": TCPListenArgs(False, 8080, 7, "127.0.0.1"),
    "tcp6:3128": TCPListenArgs(True, 3128, 50, "::"),
    r"tcp6:0:interface=\:\:1": TCPListenArgs(True, 0, 50, "::1"),
}


@pytest.mark.parametrize("description", sorted(LISTEN_CASES))
def test_tcp_listen_args(description: str) -> None:
    assert tcp_listen_args(description) == LISTEN_CASES[description]
    assert recorded_tcp_listen_args(description) == LISTEN_CASES[description]


@pytest.mark.parametrize("description", ["unix:/tmp/fwproxy.sock", "haproxy:tcp:3128"])
def test_tcp_listen_args_of_other_endpoints(description: str) -> None:
    assert tcp_listen_args(description) is None
    assert recorded_tcp_listen_args(description) is None


def test_tcp_listen_args_fall_back_when_the_fields_are_renamed(monkeypatch) -> None:
    monkeypatch.setattr(twisted_private, "TCP_ENDPOINT_ATTRIBUTES", ("_renamed", "_b", "_i"))
    assert tcp_listen_args("tcp:8080:interface=127.0.0.1:backlog=7") == (
        TCPListenArgs(False, 8080, 7, "127.0.0.1")
    )


def test_tcp_listen_args_bad_description() -> None:
    with pytest.raises(ValueError):
        tcp_listen_args("tcp:notaport")


# -- endpoint_port (fwproxy.config) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("description", "name"),
    [("haproxy:tcp:3128", "_wrappedEndpoint"), ("tcp:3128", "_port"), ("tcp6:3128", "_port")],
)
def test_endpoint_still_has(description: str, name: str) -> None:
    assert name in twisted_private.ENDPOINT_PORT_ATTRIBUTES
    endpoint = serverFromString(MemoryReactor(), description)
    assert hasattr(endpoint, name), _gone(
        type(endpoint).__name__, name, "endpoint_port falls back to a MemoryReactor's record"
    )


@pytest.mark.parametrize(
    ("description", "port"),
    [
        ("tcp:3128", 3128),
        ("tcp:99999", 99999),  # unchecked: Twisted checks the range only when it listens
        ("tcp6:70000:interface=\\:\\:1", 70000),
        ("haproxy:tcp:99999", 99999),
        ("haproxy:tcp6:443", 443),
        ("unix:/tmp/fwproxy.sock", None),
    ],
)
def test_endpoint_port(description: str, port: int | None) -> None:
    reactor = MemoryReactor()
    assert endpoint_port(serverFromString(reactor, description)) == port
    assert recorded_endpoint_port(serverFromString(reactor, description)) == port


# -- forget_exit_signal (fwproxy.service) -------------------------------------------------------


@pytest.fixture
def real_reactor() -> Iterator[SelectReactor]:
    """A real, never started reactor (not the global one)."""
    reactor = SelectReactor()
    yield reactor
    reactor.waker.connectionLost(None)


def test_reactor_records_the_exit_signal(real_reactor) -> None:
    name = twisted_private.EXIT_SIGNAL_ATTRIBUTE
    assert hasattr(real_reactor, name), _gone(
        "ReactorBase", name, "without it twistd exits with -SIGTERM instead of 0 after a drain"
    )
    # twistd's runner reads the attribute of reactors providing this (private) interface
    assert interfaces._ISupportsExitSignalCapturing.providedBy(real_reactor), (
        f"Twisted {twisted_version}: reactors no longer provide "
        "_ISupportsExitSignalCapturing: check how twistd re-raises the exit signal now"
    )
    real_reactor.sigTerm(signal.SIGTERM)
    assert getattr(real_reactor, name) == signal.SIGTERM, (
        f"Twisted {twisted_version}: sigTerm no longer records the signal in {name!r}"
    )
    assert forget_exit_signal(real_reactor, (signal.SIGTERM, signal.SIGINT))
    assert getattr(real_reactor, name) is None


def test_forget_exit_signal_keeps_other_signals(real_reactor) -> None:
    real_reactor.sigInt(signal.SIGINT)
    assert not forget_exit_signal(real_reactor, (signal.SIGTERM,))
    assert real_reactor._exitSignal == signal.SIGINT
    assert not forget_exit_signal(object(), (signal.SIGTERM,))  # a reactor without the attribute


# -- reads_proxy_header (fwproxy.connection) ----------------------------------------------------


def test_proxy_wrapper_class_is_where_fwproxy_looks() -> None:
    module, name = twisted_private.PROXY_WRAPPER
    found = getattr(importlib.import_module(module), name, None)
    assert found is not None, _gone(
        module, name, "reads_proxy_header compares class names, and proxy_protocol_from may fail"
    )


def test_a_haproxy_listeners_protocol_sees_the_wrapper(server) -> None:
    reactor = MemoryReactor()
    seen: list[object] = []

    class Seeing(Protocol):
        def connectionMade(self) -> None:
            seen.append(self.transport)

    serverFromString(reactor, "haproxy:tcp:3130").listen(Factory.forProtocol(Seeing))
    factory = reactor.tcpServers[-1][1]
    tcp_transport, _ = server
    wrapper = factory.buildProtocol(("127.0.0.1", 1))
    wrapper.makeConnection(tcp_transport)
    assert twisted_private.reads_proxy_header(seen[0])
    assert not twisted_private.reads_proxy_header(tcp_transport)
