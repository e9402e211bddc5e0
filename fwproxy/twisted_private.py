# -*- test-case-name: tests.test_twisted_private -*-
"""Every use fwproxy makes of Twisted's private or undocumented attributes, in one place.

Each accessor here names what it reads (the ``*_ATTRIBUTES`` constants), and
``tests/test_twisted_private.py`` checks each of them against the installed Twisted, so an upgrade
that renames one fails there, naming the attribute and the Twisted version, rather than somewhere
in the proxy. Where a public way to get the same answer exists the accessor falls back to it:
:func:`idle_socket` answers ``None`` (the caller then uses ``transport.write``, slower but always
right), :func:`tcp_listen_args` and :func:`endpoint_port` listen on a ``MemoryReactor`` and read
what it recorded. :func:`forget_exit_signal` has no public equivalent: without the attribute it
does nothing, and ``twistd`` exits with the signal's status instead of 0.
:func:`reads_proxy_header` knows the class of Twisted's PROXY-protocol wrapper, from a private
module; without it, it compares the class's name.
"""

from __future__ import annotations

import socket
from collections.abc import Container
from typing import Any, NamedTuple

from twisted.internet import tcp
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor

# -- direct sends on TCP transports (fwproxy.writes) -----------------------------------------

#: the transport classes :func:`idle_socket` knows the insides of (exact types: a subclass may
#: keep its own buffer)
TCP_TRANSPORTS: tuple[type, ...] = (tcp.Server, tcp.Client)

#: what :func:`idle_socket` reads on a ``tcp.Server``/``tcp.Client``: the write buffers of
#: ``abstract.FileDescriptor`` (a list, then a byte string sent from ``offset``), its
#: half-close state, the socket, and whether TLS was started on the connection
TCP_WRITE_ATTRIBUTES = (
    "TLS",
    "connected",
    "disconnecting",
    "_writeDisconnecting",
    "_writeDisconnected",
    "_tempDataBuffer",
    "dataBuffer",
    "offset",
    "socket",
)


def idle_socket(transport: object) -> socket.socket | None:
    """The socket of a plain TCP transport with nothing queued, which may be sent on directly
    without reordering anything; ``None`` for any other transport, a busy one, or a Twisted whose
    transports no longer have these attributes (then only ``transport.write`` is safe)."""
    if type(transport) not in TCP_TRANSPORTS:
        return None
    t: Any = transport
    try:
        if (
            t.TLS
            or not t.connected
            or t.disconnecting
            or t._writeDisconnecting
            or t._writeDisconnected
            or t._tempDataBuffer
            or len(t.dataBuffer) != t.offset
        ):
            return None
        sock: socket.socket = t.socket
    except AttributeError:
        return None
    return sock


# -- what a tcp:/tcp6: endpoint listens on (fwproxy.reuseport) --------------------------------

#: what :func:`tcp_listen_args` reads on ``TCP4ServerEndpoint``/``TCP6ServerEndpoint``
TCP_ENDPOINT_ATTRIBUTES = ("_port", "_backlog", "_interface")


class TCPListenArgs(NamedTuple):
    """What a ``tcp:``/``tcp6:`` server endpoint passes to ``listenTCP``."""

    ipv6: bool
    port: int
    backlog: int
    #: as written in the description: ``""`` (``tcp:``) or ``"::"`` (``tcp6:``) for all
    interface: str


def tcp_listen_args(description: str) -> TCPListenArgs | None:
    """What the server endpoint ``description`` would listen on, if it is a plain ``tcp:`` or
    ``tcp6:`` endpoint; ``None`` for other kinds. Raises what ``serverFromString`` raises for an
    invalid description."""
    reactor = MemoryReactor()
    endpoint = serverFromString(reactor, description)
    if not isinstance(endpoint, (TCP4ServerEndpoint, TCP6ServerEndpoint)):
        return None
    ipv6 = isinstance(endpoint, TCP6ServerEndpoint)
    try:
        fields: tuple[int, int, str] = tuple(  # type: ignore[assignment]
            getattr(endpoint, name) for name in TCP_ENDPOINT_ATTRIBUTES
        )
    except AttributeError:
        return recorded_tcp_listen_args(description)
    return TCPListenArgs(ipv6, *fields)


def recorded_tcp_listen_args(description: str) -> TCPListenArgs | None:
    """:func:`tcp_listen_args` through public API only: listen on a ``MemoryReactor`` and read
    the ``listenTCP`` call it recorded (``MemoryReactor.tcpServers``)."""
    reactor = MemoryReactor()
    endpoint = serverFromString(reactor, description)
    if not isinstance(endpoint, (TCP4ServerEndpoint, TCP6ServerEndpoint)):
        return None
    endpoint.listen(Factory.forProtocol(Protocol))
    port, _, backlog, interface = reactor.tcpServers[-1]
    return TCPListenArgs(isinstance(endpoint, TCP6ServerEndpoint), port, backlog, interface)


# -- the port number of an endpoint, for validation (fwproxy.config) ---------------------------

#: what :func:`endpoint_port` reads: the endpoint a ``haproxy:`` wrapper wraps, and the port of
#: a TCP or TLS server endpoint (which Twisted checks only when it listens)
ENDPOINT_PORT_ATTRIBUTES = ("_wrappedEndpoint", "_port")


def endpoint_port(endpoint: IStreamServerEndpoint) -> int | None:
    """The TCP port number a server endpoint would listen on (also through a ``haproxy:``
    wrapper, and for ``ssl:``), unchecked; ``None`` for endpoints without one (``unix:``,
    ``systemd:``). ``endpoint`` must have been made on a ``MemoryReactor``, as configuration
    checks do: the fallback listens on it."""
    inner = getattr(endpoint, "_wrappedEndpoint", endpoint)
    port = getattr(inner, "_port", None)
    if isinstance(port, int):
        return port
    return recorded_endpoint_port(endpoint)


def recorded_endpoint_port(endpoint: IStreamServerEndpoint) -> int | None:
    """:func:`endpoint_port` through public API only: listen on the endpoint (made on a
    ``MemoryReactor``) and read the port number of the fake listening port it gives."""
    result: list[Any] = []
    try:
        endpoint.listen(Factory.forProtocol(Protocol)).addBoth(result.append)
    except Exception:  # noqa: BLE001 - a kind MemoryReactor cannot fake has no TCP port either
        return None
    if not result or not IListeningPort.providedBy(result[0]):
        return None
    port = getattr(result[0].getHost(), "port", None)
    return port if isinstance(port, int) else None


# -- the PROXY-protocol wrapper (fwproxy.connection) -----------------------------------------

#: the module and class of the transport a ``haproxy:`` listener gives its protocol (the
#: package exports only ``proxyEndpoint``)
PROXY_WRAPPER = ("twisted.protocols.haproxy._wrapper", "HAProxyProtocolWrapper")

try:
    from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper as _ProxyWrapper
except ImportError:  # pragma: no cover - a Twisted that moved it: compare names instead
    _ProxyWrapper = None  # type: ignore[assignment,misc]


def reads_proxy_header(transport: object) -> bool:
    """Whether ``transport`` is Twisted's PROXY-protocol wrapper (a ``haproxy:`` listener's
    connection: its ``getPeer()`` is the TCP peer until the header has been read)."""
    if _ProxyWrapper is not None:
        return isinstance(transport, _ProxyWrapper)
    return type(transport).__name__ == PROXY_WRAPPER[1]


# -- the signal twistd re-raises at exit (fwproxy.service) ------------------------------------

#: where Twisted's reactors record the signal that stopped them (``ReactorBase.sigTerm`` and
#: ``sigInt`` set it; twistd's runner reads it and re-raises that signal once it has stopped)
EXIT_SIGNAL_ATTRIBUTE = "_exitSignal"


def forget_exit_signal(reactor: object, signals: Container[int]) -> bool:
    """If the reactor stopped because of one of ``signals``, forget it, so that twistd exits
    with status 0 instead of re-raising the signal. True if it did."""
    if getattr(reactor, EXIT_SIGNAL_ATTRIBUTE, None) in signals:
        setattr(reactor, EXIT_SIGNAL_ATTRIBUTE, None)
        return True
    return False
