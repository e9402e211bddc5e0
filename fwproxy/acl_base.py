# -*- test-case-name: tests.test_acl -*-
"""What every ACL type is built on: the :class:`Acl` base class, the :class:`AclContext` it
matches, the errors of parsing (:class:`AclError`) and of matching before a fact is known
(:class:`NeedAddresses`, :class:`NeedCredentials`, :class:`NeedSni`), and :func:`strings`, the
check of an ACL's configured values. The types themselves are in :mod:`fwproxy.acl` and
:mod:`fwproxy.acl_regex`; :mod:`fwproxy.acl` exports all of this too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fwproxy.selfcheck import IPAddress, parse_ip


class AclError(ValueError):
    """A value in an ACL definition or rule is invalid."""


class NeedAddresses(Exception):
    """A rule needs the destination's resolved addresses, which the context does not have."""


class NeedCredentials(Exception):
    """A rule needs the authenticated user, and authentication has not been tried yet."""


@dataclass(frozen=True, slots=True)
class ClientCert:
    """A client certificate verified by a TLS listener, as the ACLs and the log see it:
    ``name`` is the identity logged (the subject CN, else the first SAN DNS name), ``names``
    what a ``client_cert`` ACL matches (the CN and every SAN DNS name, lower case)."""

    name: str
    names: tuple[str, ...]


#: the key of ``Request.notes`` holding the connection's verified :class:`ClientCert`
CLIENT_CERT_NOTE = "fwproxy.client_cert"


class NeedSni(Exception):
    """A rule needs the TLS server name of a tunnel whose ClientHello has not arrived yet."""


#: a transport's or resolver's host string as an address (IPv4-mapped IPv6 becomes IPv4)
client_ip = parse_ip


@dataclass(slots=True)
class AclContext:
    """What the ACLs look at for one request (not frozen: it is made for every request, and a
    frozen dataclass is several times slower to construct)."""

    client: IPAddress | None
    method: str
    host: str
    port: int
    url: str
    user: str = ""
    now: float = 0.0
    #: resolved destination addresses; None until resolved
    addresses: tuple[IPAddress, ...] | None = None
    #: seconds east of UTC for ``time`` ACLs (None: the machine's local time)
    utcoffset: int | None = None
    #: authentication has not been tried yet: a ``proxy_auth`` ACL raises NeedCredentials
    auth_pending: bool = False
    #: the proxy's listening ``(host, port)`` pairs, for ``to_self``
    listening: Sequence[tuple[str, int]] = ()
    #: the client certificate a TLS listener verified on this connection, if any
    client_cert: ClientCert | None = None
    #: a peeked tunnel's TLS server name ("" when its ClientHello named none); None otherwise
    sni: str | None = None
    #: the ClientHello is still to come: an ``ssl_sni`` ACL raises NeedSni
    sni_pending: bool = False
    #: the origin-form target (path and query, still %-encoded) of a relayed request; b"" for
    #: CONNECT
    path: bytes = b""
    #: the proxy's own port the client connected to (behind a PROXY-protocol listener too)
    local_port: int = 0


class Acl:
    """One named ACL. Subclasses implement :meth:`match`."""

    kind = ""
    needs_addresses = False

    def __init__(self, name: str) -> None:
        self.name = name

    def match(self, ctx: AclContext) -> bool:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def strings(name: str, kind: str, values: object) -> list[str]:
    """An ACL's values as strings (one value may stand alone); :class:`AclError` otherwise."""
    if isinstance(values, (str, int)):
        values = [values]
    if not isinstance(values, list) or not values:
        raise AclError(f"acl.{name}.{kind}: expected a non-empty list")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise AclError(f"acl.{name}.{kind}: {v!r} is not a string")
        out.append(str(v))
    return out
