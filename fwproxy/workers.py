# -*- test-case-name: tests.integration.test_workers -*-
"""``--workers N``: N processes serving the same TCP ports, one per core.

Every process (the twistd process, "worker 0", and N-1 workers it spawns) binds the listening
ports itself with ``SO_REUSEPORT``, so the kernel spreads new connections across them (no
thundering herd on one shared socket). Workers inherit standard output and error: with
``[log] access = "-"`` all access-log lines go to one stream, and a log file is shared with
appending writes of whole lines.

The twistd process supervises: SIGTERM drains itself and stops the workers (each drains too);
SIGHUP reloads itself and the workers. A worker exits when its standard input closes, so
workers never outlive the twistd process, even if it is killed.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, serverFromString
from twisted.logger import Logger

log = Logger()


def reuseport_supported(description: str) -> bool:
    from twisted.internet.testing import MemoryReactor

    try:
        endpoint = serverFromString(MemoryReactor(), description)
    except Exception:  # noqa: BLE001
        return False
    return isinstance(endpoint, (TCP4ServerEndpoint, TCP6ServerEndpoint)) and hasattr(
        socket, "SO_REUSEPORT"
    )


def listen_reuseport(reactor: Any, description: str, factory: Any) -> Any:
    """Listen on a ``tcp:``/``tcp6:`` endpoint with ``SO_REUSEPORT`` set; return the port."""
    endpoint = serverFromString(reactor, description)
    if not isinstance(endpoint, (TCP4ServerEndpoint, TCP6ServerEndpoint)):
        raise ValueError(f"--workers needs tcp: or tcp6: listeners, not {description!r}")
    family = socket.AF_INET6 if isinstance(endpoint, TCP6ServerEndpoint) else socket.AF_INET
    interface = endpoint._interface or ("::" if family == socket.AF_INET6 else "0.0.0.0")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, endpoint._port))
        sock.listen(endpoint._backlog)
        sock.setblocking(False)
        return reactor.adoptStreamPort(sock.fileno(), family, factory)
    finally:
        sock.close()  # adoptStreamPort took its own copy of the descriptor


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
    """Starts and stops the worker processes of one twistd process."""

    def __init__(self, reactor: Any, count: int, argv: list[str]) -> None:
        self.reactor = reactor
        self.count = count
        self.argv = argv
        self.workers: list[tuple[_WorkerProcess, Any]] = []
        self.stopping = False

    def start(self) -> None:
        env = dict(os.environ)
        for i in range(1, self.count):
            proto = _WorkerProcess(self, i)
            args = [sys.executable, "-m", "fwproxy.workers", "--worker-id", str(i), *self.argv]
            transport = self.reactor.spawnProcess(
                proto, sys.executable, args, env=env, childFDs={0: "w", 1: 1, 2: 2}
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
        from twisted.internet.defer import DeferredList

        self.stopping = True
        self.signal(signal.SIGTERM)
        return DeferredList([p.ended for p, _ in self.workers])


def worker_main(argv: list[str]) -> None:
    """A worker: the same service as twistd's, on SO_REUSEPORT sockets."""
    from twisted.internet import reactor, stdio
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from fwproxy.service import ProxyService
    from fwproxy.tap import Options

    index = argv[argv.index("--worker-id") + 1]
    args = [a for i, a in enumerate(argv) if a != "--worker-id" and argv[i - 1] != "--worker-id"]
    options = Options()
    options.parseOptions(args)
    config = options["config_object"]
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)

    class _Parent(protocol.Protocol):
        def connectionLost(self, reason: Any = None) -> None:
            if reactor.running:  # type: ignore[attr-defined]
                reactor.stop()  # type: ignore[attr-defined]

    stdio.StandardIO(_Parent())
    service = ProxyService(config, reactor, reload=options.reloader(), signals=True, reuseport=True)
    service.worker_id = index
    reactor.callWhenRunning(service.startService)  # type: ignore[attr-defined]
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    worker_main(sys.argv[1:])
