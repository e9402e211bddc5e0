# -*- test-case-name: tests.test_writes -*-
"""Writing to a TCP transport without a detour through the reactor when it can take the bytes.

Twisted's ``transport.write`` always buffers, registers the socket for writability
(``epoll_ctl``), sends on the next reactor turn and unregisters it (``epoll_ctl`` again): three
system calls and a loop iteration for every small response. When nothing is queued on the
transport, :func:`write` sends at once and buffers only what the kernel did not take, which
keeps the transport's own ordering and flow control intact (anything unsent goes through
``transport.write``). Other transports (TLS, PROXY-protocol wrappers, test doubles) are written
to normally.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp

_TCP = (tcp.Server, tcp.Client)

#: read size and write-buffer bound for bulk streams (tunnels, large relayed bodies) instead of
#: Twisted's 64 KiB: a quarter of the system calls and callbacks per byte (a tunnel measured
#: 1.1 → 1.9 GB/s on loopback). Memory stays bounded: at most this much is buffered per
#: direction before the other side is paused.
STREAM_BUFFER = 256 * 1024


def bulk(*transports: Any) -> None:
    """Give ``transports`` the :data:`STREAM_BUFFER` size (those that have a buffer size)."""
    for t in transports:
        if hasattr(t, "bufferSize"):
            t.bufferSize = STREAM_BUFFER


def write(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, sending immediately when the transport is idle."""
    if type(transport) in _TCP and not transport.TLS:
        try:
            idle = (
                transport.connected
                and not transport.disconnecting
                and not transport._writeDisconnecting
                and not transport._tempDataBuffer
                and len(transport.dataBuffer) == transport.offset
            )
        except AttributeError:  # a Twisted without these internals: the ordinary way
            idle = False
        if idle:
            try:
                sent = transport.socket.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                sent = 0  # let the transport meet the error and close properly
            if sent == len(data):
                return
            data = data[sent:]
    transport.write(data)
