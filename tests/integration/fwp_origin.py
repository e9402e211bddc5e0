"""Loopback servers for the integration tests: the shared ones (:mod:`support.servers`), with
the integration suite's conventions: header names recorded as lower-case text, and
Content-Type on every generated body.

Routes and recording are described in :mod:`support.servers`.
"""

from __future__ import annotations

from support.servers import EchoServer, pattern, sha
from support.servers import OriginServer as _OriginServer
from support.servers import Recorded as _Recorded

__all__ = ["EchoServer", "OriginServer", "Recorded", "pattern", "sha"]


class Recorded(_Recorded):
    def names(self) -> list[str]:  # type: ignore[override]
        return [line.partition(b":")[0].strip().lower().decode() for line in self.header_lines]


class OriginServer(_OriginServer):
    record_type = Recorded
    content_types = True
