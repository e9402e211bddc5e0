# -*- test-case-name: tests.test_writes -*-
"""Writing to a TCP transport without a detour through the reactor when it can take the bytes.

Twisted's ``transport.write`` always buffers, registers the socket for writability
(``epoll_ctl``), sends on the next reactor turn and unregisters it (``epoll_ctl`` again): three
system calls and a loop iteration for every small response. When nothing is queued on the
transport, :func:`write` sends at once and buffers only what the kernel did not take, which
keeps the transport's own ordering and flow control intact (anything unsent goes through
``transport.write``). Other transports (TLS, PROXY-protocol wrappers, test doubles) are written
to normally. What "nothing is queued" means is Twisted's private business: it is asked of
:func:`fwproxy.twisted_private.idle_socket`, which says "no" if Twisted changed its insides.
Every splice writes through here, so here is where a :class:`fwproxy.streaming.Pacer` (the
transport's registered producer) learns how many bytes it has moved.
"""

from __future__ import annotations

from typing import Any

from fwproxy.streaming import Pacer
from fwproxy.twisted_private import idle_socket


def write(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, sending immediately when the transport is idle."""
    producer = getattr(transport, "producer", None)
    if producer.__class__ is Pacer:
        producer.moved(len(data))
    sock = idle_socket(transport)
    if sock is not None:
        try:
            sent = sock.send(data)
        except OSError:  # BlockingIOError included: let the transport meet it, and close properly
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
