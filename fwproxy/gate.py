# -*- test-case-name: tests.test_protocol -*-
"""The connection filters' decision on a new client connection, and what arrives meanwhile.

:class:`ConnectionGate` runs the :class:`fwproxy.interfaces.IConnectionFilter` hooks when a
client's first bytes arrive. A synchronous answer decides at once; while a hook's Deferred is
pending, the client's bytes are held (the connection is paused, so that is at most a read or
two) and handed back in order once the connection is allowed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from fwproxy import chain

log = Logger()


def _bool_or_none(value: Any) -> Any:
    # chain.run stops at the first non-None answer: "True" (serve) must let later hooks run
    if isinstance(value, Deferred):
        return value.addCallback(lambda v: None if v is True else v)
    return None if value is True else value


class ConnectionGate:
    """Decides one connection. ``allowed(held)`` is called with the bytes held while a hook
    was deciding, ``denied()`` when a hook said no or failed."""

    def __init__(
        self,
        hooks: Sequence[Callable[..., Any]],
        allowed: Callable[[list[bytes]], None],
        denied: Callable[[], None],
    ) -> None:
        self._hooks = [lambda *a, h=h: _bool_or_none(h(*a)) for h in hooks]
        self._allowed = allowed
        self._denied = denied
        #: the bytes received while deciding; None once decided
        self.held: list[bytes] | None = None

    def open(self, client: tuple[str, int], local: tuple[str, int]) -> bool | None:
        """Ask the hooks: True (serve now), False (denied: ``denied()`` was called), None
        (deciding: hold the client's bytes with :meth:`hold` until ``allowed`` is called)."""
        try:
            result = chain.run(self._hooks, client, local)
        except Exception:
            self._failed(Failure())
            return False
        if isinstance(result, Deferred):
            self.held = []
            result.addCallbacks(self._decided, self._failed)
            return None
        if result is False:
            self._denied()
            return False
        return True

    def hold(self, data: bytes) -> None:
        assert self.held is not None
        self.held.append(data)

    def _decided(self, ok: object) -> None:
        held, self.held = self.held, None
        if ok is False:
            self._denied()
        else:
            self._allowed(held or [])

    def _failed(self, f: Failure) -> None:
        self.held = None
        log.failure("fwproxy: connection filter failed", f)
        self._denied()
