# -*- test-case-name: tests.test_timer -*-
"""A restartable deadline on an injected clock, cheap to push back on every read.

Pushing back a timeout on every chunk of a stream would reschedule a DelayedCall per read.
:class:`Deadline` only records the new expiry time; when the scheduled call fires early it
reschedules itself for the remainder. One DelayedCall per deadline, whatever the traffic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mypy_extensions import mypyc_attr


@mypyc_attr(allow_interpreted_subclasses=True)
class Deadline:
    """Calls ``expired()`` once ``seconds`` pass without :meth:`touch`; stopped by :meth:`cancel`."""

    __slots__ = ("_clock", "_call", "_expires", "seconds", "expired")

    def __init__(self, clock: Any, seconds: float, expired: Callable[[], object]) -> None:
        self._clock = clock
        self.seconds = seconds
        self.expired = expired
        self._expires = clock.seconds() + seconds
        self._call: Any = clock.callLater(seconds, self._fire)

    def touch(self) -> None:
        """Activity: the deadline is ``seconds`` from now."""
        self._expires = self._clock.seconds() + self.seconds

    def restart(self, seconds: float, expired: Callable[[], object]) -> None:
        """Change the period and the callback, counting from now."""
        self.seconds = seconds
        self.expired = expired
        self._expires = self._clock.seconds() + seconds
        if self._call is None:
            self._call = self._clock.callLater(seconds, self._fire)
        elif self._call.getTime() > self._expires:
            self._call.reset(seconds)

    def cancel(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None

    @property
    def active(self) -> bool:
        return self._call is not None

    def _fire(self) -> None:
        remaining = self._expires - self._clock.seconds()
        if remaining > 1e-3:
            self._call = self._clock.callLater(remaining, self._fire)
            return
        self._call = None
        self.expired()
