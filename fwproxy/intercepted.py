# -*- test-case-name: tests.test_bump -*-
"""Requests inside an intercepted (bumped) tunnel: the relay, bound to the CONNECT authority.

The decrypted stream is served by a :class:`fwproxy.protocol.ProxyProtocol` like any client
connection, but its requests are dispatched by an :class:`Interception` to
:class:`InterceptedTransaction`: an origin-form ``GET /path`` becomes
``GET https://AUTHORITY/path`` and runs through exactly the relay (access rules per request,
where ``url_regex`` sees the ``https://`` URL; every filter hook; the access log; keep-alive;
flow control; verified TLS origination to the origin, whose failure is fwproxy's ``502`` page,
sent inside the intercepted TLS). The destination is the CONNECT's host and port: a request
whose ``Host`` (or absolute-form target) names another host than the CONNECT host or the
ClientHello's server name gets ``421 Misdirected Request`` (no fronting inside the tunnel);
a CONNECT inside the tunnel gets ``405``. The CONNECT's ``Proxy-Authorization`` stands for
the requests inside, as Squid's bumped requests inherit the CONNECT's authentication.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from fwproxy import http1
from fwproxy.acl import client_ip
from fwproxy.contracts import ClientConnection, ProxyServices, TransactionKind
from fwproxy.http1 import ProtocolError, RequestHead
from fwproxy.message import Response
from fwproxy.relay import RelayTransaction
from fwproxy.target import parse_absolute


def _split_host(value: bytes) -> tuple[str, int | None]:
    """``host``, ``host:port`` or ``[v6]:port`` of a Host field: the lower-case name (no
    brackets, no trailing dot) and the port, None when absent or not a number."""
    text = value.decode("latin-1").strip().lower()
    port: int | None = None
    if text.startswith("["):
        end = text.find("]")
        name, rest = text[1:end], text[end + 1 :]
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    else:
        name, sep, rest = text.rpartition(":")
        if sep and rest.isdigit():
            port = int(rest)
        else:
            name = text
    return name.rstrip("."), port


class Interception:
    """One bumped tunnel's binding: the CONNECT's ``host`` and ``port``, the ClientHello's
    server name ``sni`` ("" for none) and the CONNECT's ``credentials``; called with a request
    head, it names the transaction kind (:data:`fwproxy.contracts.TransactionKind`).

    A CONNECT to an IP address whose ClientHello names a server is the server name's, as
    Squid's bump names the origin by the client's SNI: the requests inside are
    ``https://SNI/...``, sent to the CONNECT's address (:attr:`address`; the name is not looked
    up), presenting the server name, and the origin's certificate must be for that name."""

    def __init__(self, host: str, port: int, sni: str, credentials: bytes | None) -> None:
        self.host = host.strip("[]").rstrip(".").lower()
        self.port = port
        self.sni = sni
        self.credentials = credentials
        #: the address the requests go to, when the CONNECT named one and the ClientHello a
        #: server (None: the authority's host is resolved as any request's)
        self.address: str | None = None
        if sni and client_ip(self.host) is not None and client_ip(sni) is None:
            self.address = self.host
        #: the origin's name: the server name of an :attr:`address`, else the CONNECT host
        self.name = sni if self.address is not None else self.host
        shown = f"[{self.name}]" if ":" in self.name else self.name
        self.prefix = f"https://{shown}".encode("ascii") + (b":%d" % port if port != 443 else b"")
        self._kind: TransactionKind = partial(InterceptedTransaction, interception=self)

    def __call__(self, head: RequestHead) -> TransactionKind:
        return self._kind

    def names(self, host: str, port: int | None) -> bool:
        """Whether ``host`` (with ``port``, None: the https default) is this tunnel's
        destination: the CONNECT host or the server name, on the CONNECT port."""
        return (host == self.host or (host == self.sni and host != "")) and (
            port or 443
        ) == self.port


class InterceptedTransaction(RelayTransaction):
    """A request inside a bumped tunnel (see the module docstring)."""

    def __init__(
        self,
        conn: ClientConnection,
        proxy: ProxyServices,
        head: RequestHead,
        interception: Interception,
    ) -> None:
        super().__init__(conn, proxy, head)
        self.interception = interception

    def start(self) -> None:
        head = self.head
        it = self.interception
        if head.method == b"CONNECT":
            answer = Response.text(405, "fwproxy: no CONNECT inside an intercepted tunnel")
            self.answer(answer, close=True)
            return
        target = head.target
        if target[:1] == b"/":
            path = target
        else:
            try:
                _, host, port, path, _ = parse_absolute(target)
            except ProtocolError as e:
                self.answer(Response.text(e.status, f"fwproxy: {e.message}"), close=True)
                return
            if not it.names(host.strip("[]").rstrip("."), port):
                self._misdirected(host)
                return
        for k, v in head.headers:
            if len(k) == 4 and k.lower() == b"host":
                name, named_port = _split_host(v)
                if not it.names(name, named_port):
                    self._misdirected(v.decode("latin-1"))
                    return
        if it.credentials is not None and http1.proxy_credentials(head.headers) is None:
            head.headers.append((b"Proxy-Authorization", it.credentials))
        head.target = it.prefix + path
        super().start()

    def run_filters(self, hooks: tuple[Any, ...], then: Any) -> None:
        req = self.request
        address = self.interception.address
        if address is not None and req is not None and req.addresses is None:
            # the server name's requests go where the client's CONNECT went, checked there
            req.addresses = [address]
        super().run_filters(hooks, then)

    def _misdirected(self, named: str) -> None:
        it = self.interception
        message = (
            f"fwproxy: this tunnel goes to {it.name}:{it.port}, not to {named}: "
            "open another CONNECT for it"
        )
        answer = Response.text(421, message)
        answer.reason = "Misdirected Request"  # RFC 9110 §15.5.20
        self.answer(answer, close=False)
