# -*- test-case-name: tests.test_proxyheader -*-
"""Who may send a PROXY-protocol header: ``[proxy] proxy_protocol_from``.

A ``haproxy:`` listener believes the client address its PROXY header names, and ``src`` rules
match that address: only the balancers in front of the proxy may be allowed to send one.
:class:`HeaderSenders` is the parsed list of networks (``[]``: no peer may; the key absent: any
peer may, as before the key existed, and ``check-config`` warns); :class:`SenderLog` rate-limits
the log line of a refused peer (once per peer per minute) and counts the refusals. The check is
made on the TCP peer, before the header (or anything else) is read: see
:mod:`fwproxy.connection`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger

from fwproxy.acl import NetworkSet
from fwproxy.selfcheck import parse_ip

log = Logger()

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: seconds between two log lines about the same refused peer
LOG_INTERVAL = 60.0
#: peers remembered for :data:`LOG_INTERVAL` at most (a scan from many addresses stays bounded)
LOG_PEERS = 4096


@dataclass(frozen=True)
class HeaderSenders:
    """The networks whose peers may send a PROXY-protocol header (empty: none may)."""

    networks: tuple[Network, ...] = ()
    _set: NetworkSet = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_set", NetworkSet(self.networks))

    def allows(self, host: str) -> bool:
        """Whether the TCP peer ``host`` (an IP address; IPv4-mapped IPv6 counts as IPv4) is
        in one of the networks. Anything that is not an IP address (a UNIX socket) is not."""
        address = parse_ip(host)
        return address is not None and address in self._set


def parse_senders(values: Iterable[object]) -> tuple[HeaderSenders, list[tuple[int, str]]]:
    """The :class:`HeaderSenders` of a list of CIDR strings (``"10.0.0.0/8"``, or a bare
    address), and the problems found, each ``(index, message)``."""
    networks: list[Network] = []
    problems: list[tuple[int, str]] = []
    for i, value in enumerate(values):
        if not isinstance(value, str):
            problems.append((i, f'expected a network like "10.0.0.0/24", got {value!r}'))
            continue
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            problems.append((i, f'{value!r} is not a network like "10.0.0.0/24" or an address'))
    return HeaderSenders(tuple(networks)), problems


def open_listeners(listen: Iterable[str]) -> list[str]:
    """The ``haproxy:`` listeners of ``listen`` (those a missing ``proxy_protocol_from`` leaves
    open to any peer)."""
    return [d for d in listen if d.startswith("haproxy:")]


def any_peer_warning(where: str, listener: str) -> str:
    """The warning about ``listener`` (a ``haproxy:`` endpoint) without ``proxy_protocol_from``;
    ``where`` names the file and key, or the command-line option, that configured it."""
    return (
        f"{where} {listener!r} accepts a PROXY header from any peer, which may then claim any "
        "client address: set proxy.proxy_protocol_from (the balancers' networks)"
    )


class SenderLog:
    """Counts the connections closed because their peer may not send a PROXY header, and logs
    each peer at most once per :data:`LOG_INTERVAL`.

    :param clock: ``IReactorTime`` (``seconds()``).
    """

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._logged: dict[str, float] = {}
        #: connections closed so far
        self.refused = 0

    def check(self, senders: HeaderSenders | None, peer: str) -> bool:
        """Whether ``peer`` may send a header (``senders`` ``None``: anyone may); a refusal is
        counted, and logged unless this peer was logged in the last minute."""
        if senders is None or senders.allows(peer):
            return True
        self.refused += 1
        now = self._clock.seconds()
        last = self._logged.get(peer)
        if last is not None and now - last < LOG_INTERVAL:
            return False
        if len(self._logged) >= LOG_PEERS:
            self._logged = {p: t for p, t in self._logged.items() if now - t < LOG_INTERVAL}
        if len(self._logged) >= LOG_PEERS:
            return False  # as many peers logged this minute as remembered: only counted
        self._logged[peer] = now
        log.warn(
            "fwproxy: closed a connection from {peer} to a haproxy: listener: that peer may not "
            "send a PROXY header (proxy.proxy_protocol_from; {n} closed so far)",
            peer=peer,
            n=self.refused,
        )
        return False
