# -*- test-case-name: tests.test_headerpolicy -*-
"""The built-in ``headers`` filter: X-Forwarded-For, Via, and header removal/addition.

``forwarded_for`` has squid's meanings:

- ``on``: append the client's address to X-Forwarded-For;
- ``off``: append ``unknown`` instead of the address;
- ``transparent``: leave X-Forwarded-For exactly as the client sent it;
- ``truncate``: replace any X-Forwarded-For by the client's address alone;
- ``delete`` (the default): remove X-Forwarded-For; none leaves the proxy.

``via`` adds ``Via: 1.1 NAME`` to requests and responses. ``remove_request`` /
``remove_response`` list header names to drop; ``set_request`` / ``set_response`` map names to
values that replace any existing field; ``add_request`` / ``add_response`` map names to values
that are appended.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from zope.interface import implementer, provider

from fwproxy.acl import client_ip
from fwproxy.interfaces import IFilterContext, IFilterFactory, IRequestFilter, IResponseFilter
from fwproxy.message import Request, Response

FORWARDED_FOR = ("on", "off", "transparent", "truncate", "delete")
_XFF = b"X-Forwarded-For"


@dataclass(frozen=True)
class HeaderPolicy:
    """The validated options of a ``headers`` filter."""

    forwarded_for: str = "delete"
    via: bool = False
    via_name: str = "fwproxy"
    remove_request: tuple[bytes, ...] = ()
    remove_response: tuple[bytes, ...] = ()
    set_request: tuple[tuple[bytes, bytes], ...] = ()
    set_response: tuple[tuple[bytes, bytes], ...] = ()
    add_request: tuple[tuple[bytes, bytes], ...] = ()
    add_response: tuple[tuple[bytes, bytes], ...] = field(default=())

    @classmethod
    def from_options(cls, options: Mapping[str, Any], where: str = "headers") -> HeaderPolicy:
        """Validate ``options`` (a TOML table); raise ValueError naming the bad key."""
        known = set(cls.__dataclass_fields__)
        for key in options:
            if key not in known:
                raise ValueError(f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})")
        ff = options.get("forwarded_for", "delete")
        if ff not in FORWARDED_FOR:
            raise ValueError(
                f"{where}.forwarded_for: {ff!r} is not one of {', '.join(FORWARDED_FOR)}"
            )
        via = options.get("via", False)
        if not isinstance(via, bool):
            raise ValueError(f"{where}.via: expected true or false, not {via!r}")
        via_name = options.get("via_name", "fwproxy")
        if not isinstance(via_name, str) or not _token_ok(via_name):
            raise ValueError(f"{where}.via_name: {via_name!r} is not a valid token")

        def names(key: str) -> tuple[bytes, ...]:
            v = options.get(key, [])
            if not isinstance(v, list) or not all(isinstance(n, str) and _token_ok(n) for n in v):
                raise ValueError(f"{where}.{key}: expected a list of header names")
            return tuple(n.encode("latin-1") for n in v)

        def pairs(key: str) -> tuple[tuple[bytes, bytes], ...]:
            v = options.get(key, {})
            if not isinstance(v, Mapping):
                raise ValueError(f'{where}.{key}: expected a table of name = "value"')
            out = []
            for n, val in v.items():
                if not _token_ok(n):
                    raise ValueError(f"{where}.{key}: {n!r} is not a valid header name")
                if not isinstance(val, str) or any(c in val for c in "\r\n\0"):
                    raise ValueError(f"{where}.{key}.{n}: value must be a one-line string")
                if any(ord(c) > 0xFF for c in val):
                    raise ValueError(f"{where}.{key}.{n}: value must be Latin-1 text")
                out.append((n.encode("latin-1"), val.encode("latin-1")))
            return tuple(out)

        return cls(
            forwarded_for=ff,
            via=via,
            via_name=via_name,
            remove_request=names("remove_request"),
            remove_response=names("remove_response"),
            set_request=pairs("set_request"),
            set_response=pairs("set_response"),
            add_request=pairs("add_request"),
            add_response=pairs("add_response"),
        )


def _token_ok(name: str) -> bool:
    # str.isalnum() is true for "é" and "名": a token is ASCII (RFC 9110 §5.6.2)
    ok = name.isascii() and all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in name)
    return bool(name) and ok


def forwarded_for(policy: str, existing: list[bytes], client: str) -> bytes | None:
    """The X-Forwarded-For value to send under ``policy``, or None for none at all."""
    if policy == "delete":
        return None
    if policy == "transparent":
        return b", ".join(existing) if existing else None
    ip = client_ip(client)
    addr = str(ip).encode() if ip is not None else client.encode("latin-1", "replace")
    if policy == "truncate":
        return addr
    mine = addr if policy == "on" else b"unknown"
    return b", ".join([*existing, mine])


@implementer(IRequestFilter, IResponseFilter)
class HeadersFilter:
    """Applies a :class:`HeaderPolicy` to request and response heads."""

    def __init__(self, policy: HeaderPolicy) -> None:
        self.policy = policy
        self._via = b"1.1 " + policy.via_name.encode()
        self._noop_response = not (
            policy.via or policy.remove_response or policy.set_response or policy.add_response
        )

    def requestReceived(self, request: Request) -> None:
        p = self.policy
        h = request.headers
        if p.forwarded_for == "delete":
            h.remove(_XFF)
        elif p.forwarded_for != "transparent":
            value = forwarded_for(p.forwarded_for, h.get_all(_XFF), request.client[0])
            h.remove(_XFF)
            if value is not None:
                h.add(_XFF, value)
        self._edit(h, p.remove_request, p.set_request, p.add_request)
        return None

    def responseReceived(self, request: Request, response: Response) -> None:
        if self._noop_response:
            return None
        p = self.policy
        self._edit(response.headers, p.remove_response, p.set_response, p.add_response)
        return None

    def _edit(self, h: Any, remove: tuple, set_: tuple, add: tuple) -> None:
        for name in remove:
            h.remove(name)
        for name, value in set_:
            h.set(name, value)
        for name, value in add:
            h.add(name, value)
        if self.policy.via:
            h.add(b"Via", self._via)


@provider(IFilterFactory)
class HeadersFilterFactory:
    """``headers``: the ``[headers]`` table, or a ``[[filters]]`` entry's options."""

    name = "headers"

    @staticmethod
    def build(options: Mapping[str, Any], context: IFilterContext) -> HeadersFilter:
        return HeadersFilter(HeaderPolicy.from_options(options))
