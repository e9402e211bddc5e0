# -*- test-case-name: tests.test_admission -*-
"""Which client connections are served: the connection limits and their ``503``.

:class:`Admission` counts every open client connection (``limits.max_connections``, by default
what the file-descriptor limit allows) and the connections of each client address
(``limits.max_connections_per_client``). A connection over a limit is answered ``503`` and
closed before anything of it is read. Behind a PROXY-protocol listener the real client is known
only once its header has arrived: the connection is then counted again, against that address.
Refusals are logged at most once every ten seconds, with the count so far. A PROXY-protocol
listener's peer that may not send the header (``[proxy] proxy_protocol_from``,
:mod:`fwproxy.proxyheader`) is closed before anything of it is read: :meth:`Admission.may_send_header`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from fwproxy.proxyheader import HeaderSenders, SenderLog

log = Logger()


def fd_budget() -> int:
    """Client connections the file-descriptor limit allows: each may need an upstream too."""
    try:
        import resource
    except ImportError:  # not on this platform
        return 1024
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ValueError, OSError):
        return 1024
    if soft == resource.RLIM_INFINITY:
        return 100_000
    return max(16, (soft - 64) // 2)


def refusal(why: str) -> bytes:
    """The ``503`` sent to a refused connection."""
    body = f"fwproxy: {why}\n".encode()
    return (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
    )


class Admission:
    """Counts client connections in and out against the limits.

    :param clock: for rate-limiting the refusal log line.
    :param max_connections: connections in all (0: what the file-descriptor limit allows).
    :param max_per_client: connections per client address (0: no limit).
    :param idle: called when the last connection has gone.
    """

    def __init__(
        self,
        clock: Any,
        max_connections: int = 0,
        max_per_client: int = 0,
        idle: Callable[[], None] | None = None,
    ) -> None:
        self._clock = clock
        self.connections: set[Any] = set()
        self._per_client: dict[str, int] = {}
        self._counted: dict[Any, str] = {}
        self.refused = 0
        self._logged = -1e9
        self._idle = idle
        #: the peers refused a PROXY header (counted, logged once per peer per minute)
        self.senders = SenderLog(clock)
        self.configure(max_connections, max_per_client)

    def configure(self, max_connections: int, max_per_client: int) -> None:
        """New limits (on reload); connections already open stay."""
        self.max_connections = max_connections or fd_budget()
        self.max_per_client = max_per_client

    def admit(self, conn: Any, client: str) -> bytes | None:
        """Count a new connection from ``client`` in, or return the answer to send before
        closing it (503)."""
        if len(self.connections) >= self.max_connections:
            return self._refuse("too many connections")
        self.connections.add(conn)
        return self._count(conn, client)

    def may_send_header(self, peer: str, senders: HeaderSenders | None) -> bool:
        """Whether the TCP peer ``peer`` of a PROXY-protocol listener may send its header
        (``senders``: ``[proxy] proxy_protocol_from``; ``None``: any peer may)."""
        return self.senders.check(senders, peer)

    def recount(self, conn: Any, client: str) -> bytes | None:
        """The connection's real client is ``client`` (a PROXY-protocol header said so)."""
        self._uncount(conn)
        return self._count(conn, client)

    def forget(self, conn: Any) -> None:
        """``conn`` has closed."""
        self._uncount(conn)
        if conn in self.connections:
            self.connections.discard(conn)
            if not self.connections and self._idle is not None:
                self._idle()

    def _count(self, conn: Any, client: str) -> bytes | None:
        limit = self.max_per_client
        if not limit:
            return None
        n = self._per_client.get(client, 0)
        if n >= limit:
            return self._refuse("too many connections from your address")
        self._per_client[client] = n + 1
        self._counted[conn] = client
        return None

    def _uncount(self, conn: Any) -> None:
        client = self._counted.pop(conn, None)
        if client is not None:
            n = self._per_client.get(client, 1) - 1
            if n > 0:
                self._per_client[client] = n
            else:
                self._per_client.pop(client, None)

    def _refuse(self, why: str) -> bytes:
        self.refused += 1
        now = self._clock.seconds()
        if now - self._logged > 10:
            self._logged = now
            log.warn(
                "fwproxy: refusing connections ({why}; {n} refused so far)", why=why, n=self.refused
            )
        return refusal(why)
