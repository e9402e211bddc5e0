# -*- test-case-name: tests.test_streaming -*-
"""How much a stream splice reads and buffers: large pieces while its readers keep up, small
ones once one of them has shown it cannot.

A tunnel or a large relayed body moves bytes from a producing transport (the upstream, say) to a
consuming one (the client), with the producer registered as the consumer's streaming producer.
Twisted's ``bufferSize`` is both how much a transport reads per ``recv`` and how much it buffers
for writing before it pauses its producer, so a consumer that cannot keep up holds up to one
bound plus one read in user space, on top of the kernel's socket buffers: with 256 KiB (the
size that makes fast streams cheap) about 350 KiB per slow reader, which a thousand slow readers
(slowhttptest ``-X``) turn into 350 MB. A :class:`Pacing` gives the transports of one splice
:data:`SMALL` buffers, which bound that to 32 KiB per direction, and :data:`LARGE` ones only
while every direction keeps up. Each direction is a :class:`Pacer` that its consumer sees as its
producer: it passes pause, resume and stop on, times each pause, and counts the bytes moved
(told by :func:`fwproxy.writes.write`, through which every splice writes).

A direction falls *behind* when its consumer took longer than :data:`SLOW_DRAIN` to drain its
buffer (the time from pause to resume): the splice gets small buffers, and the direction must
move :data:`KEEP_UP` bytes before it counts as keeping up again. A fast reader pauses its
producer too, every few milliseconds on loopback, but resumes it at once: those pauses change
nothing. Every :data:`KEEP_UP` bytes moved while small, the splice gets large buffers if no
direction is paused or behind and no consumer's socket still holds more than :data:`BACKLOG`
bytes unsent or unacknowledged: the kernel takes megabytes from a reader that reads nothing
before the proxy's own buffer fills, so the count of bytes moved alone would take a slow reader
for a fast one. So a reader that is slow from the start never gets large buffers; one that stops
after a fast start leaves at most twice :data:`LARGE` in its buffer, and small ones afterwards.
"""

from __future__ import annotations

import fcntl
import struct
import termios
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

#: read size and write-buffer bound while every reader keeps up (Twisted's default is 64 KiB):
#: a quarter of the system calls and callbacks per byte (a tunnel measured 1.1 → 1.9 GB/s on
#: loopback)
LARGE = 256 * 1024
#: read size and write-buffer bound otherwise: a transport pauses its producer when more than
#: this is buffered, which one read of this size can have caused, so at most twice this is
#: buffered per direction
SMALL = 16 * 1024
#: bytes between two checks of the readers' kernel backlogs while small, and bytes a direction
#: that fell behind must move before it counts as keeping up again
KEEP_UP = 1024 * 1024
#: a reader whose socket still holds more than this (unsent or unacknowledged) is behind: one
#: that reads nothing holds about all of the last :data:`KEEP_UP` bytes
BACKLOG = 512 * 1024
#: seconds: a consumer that took longer to drain its buffer (pause to resume) is a slow reader
SLOW_DRAIN = 0.05
#: relayed bodies larger than this (or of unknown length) are paced; a smaller one cannot fill
#: more than this in Twisted's default 64 KiB buffers
PACE_OVER = 64 * 1024


class Clock(Protocol):
    """What a :class:`Pacing` uses of the reactor."""

    def seconds(self) -> float: ...


_OUTQ = getattr(termios, "TIOCOUTQ", None)  # Linux's SIOCOUTQ


def kernel_backlog(transport: Any) -> int | None:
    """Bytes the kernel still holds for ``transport``'s socket, unsent or unacknowledged;
    ``None`` where that cannot be asked (no socket, not Linux)."""
    try:
        fd = transport.getHandle().fileno()
        if _OUTQ is None or fd < 0:
            return None
        queued: int = struct.unpack("i", fcntl.ioctl(fd, _OUTQ, b"\0\0\0\0"))[0]
    except Exception:  # noqa: BLE001 - a TLS handle, a closed socket: unknown
        return None
    return queued


@dataclass(frozen=True, slots=True)
class Policy:
    """The sizes and thresholds of a :class:`Pacing` (the module's constants by default)."""

    small: int = SMALL
    large: int = LARGE
    keep_up: int = KEEP_UP
    max_backlog: int = BACKLOG
    slow_drain: float = SLOW_DRAIN
    #: bytes the kernel holds for a consumer's socket (``None``: unknown)
    backlog: Callable[[Any], int | None] = kernel_backlog


DEFAULT = Policy()


class Pacing:
    """The buffer sizes of the transports of one splice, and its directions (:meth:`link`).

    The transports get ``policy.small`` buffers at once; :meth:`detach` gives them back the
    sizes they had. Transports without a ``bufferSize`` (TLS, test doubles) are left alone: they
    have no buffer bound to set. ``clock`` times pauses (the reactor). One per tunnel and per
    large relayed body, so it keeps little: the policy is shared.
    """

    __slots__ = ("policy", "clock", "large", "_transports", "_sizes", "_pacers", "_due", "_behind",
                 "_pausing")  # fmt: skip

    def __init__(self, transports: Iterable[Any], clock: Clock, policy: Policy = DEFAULT) -> None:
        self._transports = tuple(t for t in transports if hasattr(t, "bufferSize"))
        self._sizes = tuple(t.bufferSize for t in self._transports)
        self.policy = policy
        self.clock = clock
        #: the transports have large buffers now
        self.large = False
        self._pacers: tuple[Pacer, ...] = ()
        self._due = policy.keep_up  # bytes to move before the next check
        self._behind = 0  # directions that fell behind and have not moved keep_up bytes since
        self._pausing = 0  # directions paused now
        self._set(policy.small)

    def link(self, producer: Any, consumer: Any) -> Pacer:
        """Register a :class:`Pacer` for ``producer`` as ``consumer``'s streaming producer."""
        pacer = Pacer(self, producer, consumer)
        self._pacers += (pacer,)
        consumer.registerProducer(pacer, True)
        return pacer

    def detach(self) -> None:
        """Unregister every direction's pacer and give the transports their sizes back (a
        producer its consumer paused stays paused, as on ``unregisterProducer``)."""
        pacers, self._pacers = self._pacers, ()
        for pacer in pacers:
            try:
                pacer.consumer.unregisterProducer()
            except Exception:  # noqa: BLE001 - a transport already gone may refuse
                pass
        for t, size in zip(self._transports, self._sizes, strict=True):
            t.bufferSize = size

    def _set(self, size: int) -> None:
        self.large = size == self.policy.large
        for t in self._transports:
            t.bufferSize = size

    def _fell_behind(self, pacer: Pacer) -> None:
        if pacer._owed <= 0:
            self._behind += 1
        pacer._owed = self._due = self.policy.keep_up
        if self.large:
            self._set(self.policy.small)

    def _check(self) -> None:
        """``keep_up`` bytes moved while small: large buffers, unless a direction is paused or
        behind, or its reader's socket holds more than ``max_backlog``."""
        policy = self.policy
        self._due = policy.keep_up
        if self.large or self._behind or self._pausing:
            return
        for pacer in self._pacers:
            queued = policy.backlog(pacer.consumer)
            if queued is not None and queued > policy.max_backlog:
                return
        self._set(policy.large)


@implementer(IPushProducer)
class Pacer:
    """One direction of a :class:`Pacing`: the producer its consumer sees."""

    __slots__ = ("_pacing", "producer", "consumer", "_owed", "_paused_at")

    def __init__(self, pacing: Pacing, producer: Any, consumer: Any) -> None:
        self._pacing = pacing
        #: the transport read from
        self.producer = producer
        #: the transport written to
        self.consumer = consumer
        self._owed = 0  # bytes to move before this direction counts as keeping up again
        self._paused_at: float | None = None

    def moved(self, n: int) -> None:
        """``n`` bytes were read from the producer and are being written to the consumer."""
        pacing = self._pacing
        if self._owed > 0:
            self._owed -= n
            if self._owed <= 0:
                pacing._behind -= 1
        if not pacing.large:
            pacing._due -= n
            if pacing._due <= 0:
                pacing._check()

    # -- IPushProducer, called by the consumer ------------------------------------------------
    def pauseProducing(self) -> None:
        if self._paused_at is None:
            self._paused_at = self._pacing.clock.seconds()
            self._pacing._pausing += 1
        self.producer.pauseProducing()

    def resumeProducing(self) -> None:
        since = self._paused_at
        if since is not None:
            pacing = self._pacing
            self._paused_at = None
            pacing._pausing -= 1
            if pacing.clock.seconds() - since > pacing.policy.slow_drain:
                pacing._fell_behind(self)
        self.producer.resumeProducing()

    def stopProducing(self) -> None:
        self.producer.stopProducing()
