# -*- test-case-name: tests.test_logformat -*-
"""The built-in ``accesslog`` filter: one line per finished transaction.

Lines are formatted by :mod:`fwproxy.logformat` and written to a file (opened for appending
when the proxy starts, re-opened by :meth:`AccessLog.reopen` after rotation) or to standard
output (``"-"``, for containers). Lines written during one reactor turn are flushed together at
its end, so a busy proxy makes one write system call per turn, not one per request.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import IO, Any

from zope.interface import implementer, provider

from fwproxy.interfaces import (
    IFilterContext,
    IFilterFactory,
    IFilterLifecycle,
    ITransactionObserver,
)
from fwproxy.logformat import FORMATS
from fwproxy.record import TransactionRecord


@implementer(ITransactionObserver, IFilterLifecycle)
class AccessLog:
    """Writes each :class:`TransactionRecord` as a line to ``path`` (``"-"``: stdout)."""

    def __init__(self, path: str, fmt: str, reactor: Any) -> None:
        self.path = path
        self.format = FORMATS[fmt]
        self._reactor = reactor
        self._file: IO[str] | None = None
        self._pending: list[str] = []
        self._flush_scheduled = False

    def _open(self) -> IO[str]:
        if self.path == "-":
            # the process's real standard output, even under twistd (which redirects
            # sys.stdout into its own log): a container's log driver gets bare lines
            return open(os.dup(1), "w", encoding="utf-8", errors="backslashreplace")
        return open(self.path, "a", encoding="utf-8", errors="backslashreplace")

    def startFilter(self) -> None:
        if self._file is None:
            self._file = self._open()

    def stopFilter(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
        self._file = None

    def reopen(self) -> None:
        self.flush()
        if self.path != "-":
            old, self._file = self._file, None
            if old is not None:
                old.close()
            self._file = self._open()

    def transactionFinished(self, record: TransactionRecord) -> None:
        self._pending.append(self.format(record))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._reactor.callLater(0, self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending:
            return
        if self._file is None:
            self._file = self._open()
        lines, self._pending = self._pending, []
        try:
            self._file.write("\n".join(lines) + "\n")
            self._file.flush()
        except (OSError, ValueError) as e:  # a full disk must not take the proxy down
            sys.stderr.write(f"fwproxy: access log {self.path}: {e}\n")


@provider(IFilterFactory)
class AccessLogFactory:
    """``accesslog``: options ``access`` (a path or ``"-"``) and ``format``."""

    name = "accesslog"

    @staticmethod
    def build(options: Mapping[str, Any], context: IFilterContext) -> AccessLog:
        for key in options:
            if key not in ("access", "format"):
                raise ValueError(f"log.{key}: unknown key (known: access, format)")
        path = options.get("access", "-")
        fmt = options.get("format", "squid")
        if not isinstance(path, str) or not path:
            raise ValueError('log.access: expected a file path or "-" for standard output')
        if fmt not in FORMATS:
            raise ValueError(f"log.format: {fmt!r} is not one of {', '.join(FORMATS)}")
        if path != "-":
            d = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(d):
                raise ValueError(f"log.access: directory {d!r} does not exist")
        return AccessLog(path, fmt, context.reactor)
