# -*- test-case-name: tests.test_upgrade -*-
"""``[relay]``: options of the relay, validated; for now ``upgrade``, the protocols a relayed
request may switch to (HTTP Upgrade, :mod:`fwproxy.upgrade`), as Squid's
``http_upgrade_request_protocols`` names them: ``"websocket"`` (any version of it) or
``"name/version"`` (that version only). Names are compared case-insensitively (RFC 9110
§7.8), so they are kept lower-cased. The default is none: ``Upgrade`` is stripped as every
hop-by-hop field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fwproxy.configcheck import Problems, unknown

_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(frozen=True)
class RelayConfig:
    """``[relay]``: ``upgrade``, the protocols (lower-cased ``name`` or ``name/version``) a
    relayed request may be upgraded to."""

    upgrade: frozenset[str] = frozenset()


def is_protocol(value: str) -> bool:
    """Whether ``value`` is ``token`` or ``token/token`` (RFC 9110 §7.8's protocol)."""
    name, slash, version = value.partition("/")
    parts = (name, version) if slash else (name,)
    return all(part and all(c in _TCHAR for c in part) for part in parts)


def relay(p: Problems, section: Mapping[str, Any]) -> dict[str, Any]:
    """The valid values of ``[relay]``; problems reported to ``p`` by key and line."""
    unknown(p, "relay", section, ("upgrade",))
    values: dict[str, Any] = {}
    if "upgrade" in section:
        listed = section["upgrade"]
        if not isinstance(listed, list):
            p.add(
                "relay.upgrade", f'expected a list of protocols like ["websocket"], got {listed!r}'
            )
            return values
        good = set()
        for i, name in enumerate(listed):
            if not isinstance(name, str) or not is_protocol(name):
                p.add(
                    "relay.upgrade",
                    f'{name!r} is not a protocol name (a token like "websocket", or "name/version")',
                    ("relay", "upgrade", i),
                )
            else:
                good.add(name.lower())
        values["upgrade"] = frozenset(good)
    return values
