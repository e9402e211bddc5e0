# -*- test-case-name: tests.test_watch -*-
"""Noticing that the configuration file changed, for ``[proxy] watch_config = true``.

A Kubernetes ConfigMap mounted as a directory is updated by the kubelet without writing to the
file a process opened: it writes the new content into a fresh timestamped directory and renames a
``..data`` symlink over the old one, so ``/etc/fwproxy/fwproxy.toml`` (a symlink to
``..data/fwproxy.toml``) resolves to another file. No signal is sent. :class:`ConfigWatcher`
polls the path's identity (the file it resolves to, its inode, size and modification time) every
few seconds on the reactor it is given, and calls ``changed`` once per change, which the proxy
service wires to exactly what SIGHUP does. A path that cannot be read for a moment (mid-swap, or
removed) is not a change: the next readable state is compared with the last one seen.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

#: seconds between two looks at the file (the kubelet itself takes a minute or so to sync)
INTERVAL = 2.0


class FileIdentity(NamedTuple):
    """What changes when a file is rewritten in place or replaced by a symlink swap."""

    target: str
    device: int
    inode: int
    size: int
    mtime_ns: int


def identity(path: str) -> FileIdentity | None:
    """The identity of the file ``path`` resolves to now; None if it cannot be seen."""
    try:
        target = os.path.realpath(path)
        st = os.stat(target)
    except OSError:
        return None
    return FileIdentity(target, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class ConfigWatcher:
    """Calls ``changed()`` when the file at ``path`` is replaced or rewritten.

    :param path: the configuration file, as the proxy was told it (a symlink is followed on
        every look, so a swapped symlink anywhere on the way is a change).
    :param reactor: provides ``IReactorTime``; the looks are scheduled on it.
    :param changed: what to do on a change (the proxy service's ``reload``); an exception it
        raises is logged and watching goes on.
    :param interval: seconds between two looks.
    """

    def __init__(
        self,
        path: str,
        reactor: Any,
        changed: Callable[[], object],
        interval: float = INTERVAL,
    ) -> None:
        self.path = path
        self.interval = interval
        self._changed = changed
        self._last = identity(path)
        self._loop = LoopingCall(self.check)
        self._loop.clock = reactor

    @property
    def running(self) -> bool:
        return self._loop.running

    def start(self) -> None:
        """Look every ``interval`` seconds from now on (the current state is the baseline)."""
        if not self._loop.running:
            self._last = identity(self.path)
            self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def check(self) -> bool:
        """Look once; whether the file changed (and ``changed`` was called)."""
        now = identity(self.path)
        if now is None or now == self._last:
            return False
        self._last = now
        log.info("fwproxy: {path} changed: reloading", path=self.path)
        try:
            self._changed()
        except Exception:
            log.failure("fwproxy: reloading after {path} changed", path=self.path)
        return True
