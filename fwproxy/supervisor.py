# -*- test-case-name: tests.test_service -*-
"""``--workers N``: the twistd process starts N-1 worker processes and passes signals on.

The twistd process is "worker 0"; each other worker is ``python -m fwproxy.worker`` with the
same ``--config``/``--listen`` options, binding the same ports with ``SO_REUSEPORT``
(:mod:`fwproxy.reuseport`). Workers inherit standard output and error: with
``[log] access = "-"`` all access-log lines go to one stream, and a log file is shared with
appending writes of whole lines.

SIGTERM drains the twistd process and stops the workers (each drains too); SIGHUP and SIGUSR1
are passed on. A worker exits when its standard input closes, so workers never outlive the
twistd process, even if it is killed.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorProcess
from twisted.logger import Logger

log = Logger()

#: the worker processes' entry point, run as ``python -m``
WORKER_MODULE = "fwproxy.worker"


class _WorkerProcess(protocol.ProcessProtocol):
    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: Any) -> None:
        code = getattr(reason.value, "exitCode", None)
        if not self.supervisor.stopping:
            log.error("fwproxy: worker {i} exited ({code})", i=self.index, code=code)
        self.ended.callback(None)


class Supervisor:
    """Starts and stops the worker processes of one twistd process.

    :param count: the number of processes, this one included.
    :param argv: the worker's options (``--config FILE``, ``--listen ENDPOINT``...).
    """

    def __init__(self, reactor: IReactorProcess, count: int, argv: list[str]) -> None:
        self.reactor = reactor
        self.count = count
        self.argv = argv
        self.workers: list[tuple[_WorkerProcess, Any]] = []
        self.stopping = False

    def command(self, index: int) -> list[str]:
        """The command line of worker ``index``."""
        return [sys.executable, "-m", WORKER_MODULE, "--worker-id", str(index), *self.argv]

    def start(self) -> None:
        env = dict(os.environ)
        for i in range(1, self.count):
            proto = _WorkerProcess(self, i)
            transport = self.reactor.spawnProcess(
                proto, sys.executable, self.command(i), env=env, childFDs={0: "w", 1: 1, 2: 2}
            )
            self.workers.append((proto, transport))
        log.info("fwproxy: started {n} worker process(es)", n=len(self.workers))

    def signal(self, signum: int) -> None:
        for proto, transport in self.workers:
            if not proto.ended.called:
                try:
                    transport.signalProcess(signum)
                except Exception:  # noqa: BLE001 - already gone
                    pass

    def stop(self) -> Deferred[Any]:
        self.stopping = True
        self.signal(signal.SIGTERM)
        return DeferredList([p.ended for p, _ in self.workers])
