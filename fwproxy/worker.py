# -*- test-case-name: tests.integration.test_workers -*-
"""A worker process of ``--workers N``: ``python -m fwproxy.worker --worker-id I [OPTIONS]``.

Started by :class:`fwproxy.supervisor.Supervisor` with the twistd process's ``--config`` and
``--listen`` options, it runs the same proxy on ``SO_REUSEPORT`` sockets, logs to standard
error, reloads on SIGHUP, drains and exits on SIGTERM, and exits when its standard input (a pipe
from the twistd process) closes. A port it cannot listen on is one line on standard error and
exit status 1.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet import protocol, stdio
from twisted.logger import globalLogBeginner, textFileLogObserver

from fwproxy.metrics_shared import METRICS_DIR_ENV
from fwproxy.service import ListenError, ProxyService
from fwproxy.tap import Options


class _Parent(protocol.Protocol):
    """Standard input, a pipe from the twistd process: when it closes, the worker stops."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def connectionLost(self, reason: Any = None) -> None:
        if self.reactor.running:
            self.reactor.stop()


def worker_options(argv: list[str]) -> tuple[str, Options]:
    """``(worker id, the proxy's options)`` from a worker's command line."""
    args = list(argv)
    index = "?"
    if "--worker-id" in args:
        at = args.index("--worker-id")
        index = args[at + 1] if at + 1 < len(args) else index
        del args[at : at + 2]
    options = Options()
    options.parseOptions(args)
    return index, options


def run(reactor: Any, argv: list[str]) -> int:
    """Run a worker until it is stopped; its exit status."""
    index, options = worker_options(argv)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    stdio.StandardIO(_Parent(reactor), reactor=reactor)
    service = ProxyService(
        options["config_object"],
        reactor,
        reload=options.reloader(),
        signals=True,
        reuseport=True,
        metrics_dir=os.environ.get(METRICS_DIR_ENV),  # set by the twistd process
    )
    try:
        service.startService()
    except ListenError as e:
        sys.stderr.write(f"fwproxy: worker {index}: {e}\n")
        return 1
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    from twisted.internet import reactor

    sys.exit(run(reactor, sys.argv[1:]))
