# -*- test-case-name: tests.test_service -*-
"""Listening sockets that several processes share with ``SO_REUSEPORT`` (``--workers N``).

Every process of a ``--workers`` proxy binds the same ``tcp:``/``tcp6:`` ports itself with
``SO_REUSEPORT``, so the kernel spreads new connections across them (no thundering herd on one
inherited socket). The socket is made here and handed to the reactor with ``adoptStreamPort``;
what the endpoint description asks for (port, interface, backlog) comes from
:func:`fwproxy.twisted_private.tcp_listen_args`.
"""

from __future__ import annotations

import socket

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IReactorSocket

from fwproxy.twisted_private import tcp_listen_args


def reuseport_supported(description: str) -> bool:
    """Whether :func:`listen_reuseport` can listen on ``description`` on this system."""
    try:
        args = tcp_listen_args(description)
    except Exception:  # noqa: BLE001 - Twisted raises several types for bad strings
        return False
    return args is not None and hasattr(socket, "SO_REUSEPORT")


def listen_reuseport(
    reactor: IReactorSocket, description: str, factory: IProtocolFactory
) -> IListeningPort:
    """Listen on a ``tcp:``/``tcp6:`` endpoint with ``SO_REUSEPORT`` set; return the port.

    :raises ValueError: ``description`` is another kind of endpoint.
    :raises CannotListenError: the address cannot be bound (in use, not ours...).
    """
    args = tcp_listen_args(description)
    if args is None:
        raise ValueError(f"--workers needs tcp: or tcp6: listeners, not {description!r}")
    family = socket.AF_INET6 if args.ipv6 else socket.AF_INET
    interface = args.interface or ("::" if args.ipv6 else "0.0.0.0")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((interface, args.port))
            sock.listen(args.backlog)
        except OSError as e:
            raise CannotListenError(interface, args.port, e) from None
        sock.setblocking(False)
        # Twisted annotates this ServerFactory; any IProtocolFactory does (as for listenTCP)
        return reactor.adoptStreamPort(sock.fileno(), family, factory)  # type: ignore[arg-type]
    finally:
        sock.close()  # adoptStreamPort took its own copy of the descriptor
