"""ProxyService start-up and shutdown without a running reactor: ports it cannot listen on
(one clear error, nothing left listening), the ``SO_REUSEPORT`` listener of ``--workers`` on
real loopback sockets, the one-line exit of a foreground process, and the import order of the
modules behind ``twistd fwproxy``."""

from __future__ import annotations

import ast
import errno
import io
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock

from fwproxy.config import loads
from fwproxy.reuseport import listen_reuseport, reuseport_supported
from fwproxy.service import Foreground, ListenError, ProxyService
from fwproxy.supervisor import WORKER_MODULE, Supervisor

PACKAGE = Path(__file__).resolve().parents[1] / "fwproxy"
EADDRINUSE = OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))


class BusyReactor(MemoryReactorClock):
    """Listens like a MemoryReactor, except on ``busy`` ports: the bind error of a real one."""

    def __init__(self, busy: int) -> None:
        super().__init__()
        self.busy = busy
        self.stopped: list[Any] = []

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        if port == self.busy:
            raise CannotListenError(interface, port, EADDRINUSE)
        listening = super().listenTCP(port, factory, backlog, interface)
        real_stop = listening.stopListening
        listening.stopListening = lambda: (self.stopped.append(port), real_stop())[1]
        return listening


def _service(listen: list[str], reactor: Any, **kwargs: Any) -> ProxyService:
    quoted = ", ".join(f"'{d}'" for d in listen)
    return ProxyService(loads(f"[proxy]\nlisten = [{quoted}]\n"), reactor, **kwargs)


# -- start-up errors ------------------------------------------------------------------------------


def test_listen_error_names_endpoint_and_cause() -> None:
    e = ListenError.from_exception(
        "tcp:3128:interface=127.0.0.1", CannotListenError("127.0.0.1", 3128, EADDRINUSE)
    )
    assert str(e) == "cannot listen on tcp:3128:interface=127.0.0.1: address already in use"
    assert (e.description, e.cause) == ("tcp:3128:interface=127.0.0.1", "address already in use")
    denied = OSError(errno.EACCES, os.strerror(errno.EACCES))
    assert ListenError.from_exception("tcp:80", denied).cause == "permission denied"
    assert ListenError.from_exception("x", CannotListenError(None, "x", None)).cause


def test_port_in_use_raises_listen_error_and_closes_the_others() -> None:
    reactor = BusyReactor(busy=3129)
    service = _service(["tcp:3128:interface=127.0.0.1", "tcp:3129:interface=127.0.0.1"], reactor)
    with pytest.raises(ListenError) as caught:
        service.startService()
    assert str(caught.value) == (
        "cannot listen on tcp:3129:interface=127.0.0.1: address already in use"
    )
    assert reactor.stopped == [3128]  # the port opened before it is closed again
    assert service.ports == [] and not service.running


def test_listening_ports_are_recorded() -> None:
    reactor = MemoryReactorClock()
    service = _service(["tcp:3128:interface=127.0.0.1", "tcp6:3129"], reactor)
    service.startService()
    assert [(p, i) for p, _, _, i in reactor.tcpServers] == [(3128, "127.0.0.1"), (3129, "::")]
    assert len(service.ports) == 2 and service.running


def test_foreground_exits_with_one_line() -> None:
    stderr = io.StringIO()
    service = Foreground(
        _service(["tcp:3128:interface=127.0.0.1"], BusyReactor(busy=3128)), stderr=stderr
    )
    with pytest.raises(SystemExit) as caught:
        service.startService()
    assert caught.value.code == 1
    assert stderr.getvalue() == (
        "fwproxy: cannot listen on tcp:3128:interface=127.0.0.1: address already in use\n"
    )


def test_foreground_passes_other_errors_on() -> None:
    class Broken(Service):
        def startService(self) -> None:
            raise RuntimeError("a bug, with its traceback")

    with pytest.raises(RuntimeError):
        Foreground(Broken(), stderr=io.StringIO()).startService()


def test_stop_after_sigterm_is_a_clean_exit() -> None:
    reactor = MemoryReactorClock()
    service = _service(["tcp:3128:interface=127.0.0.1"], reactor, signals=True)
    reactor._exitSignal = signal.SIGTERM  # what Twisted's own SIGTERM handler records
    service.stopService()
    assert reactor._exitSignal is None  # twistd would re-raise it at exit (status -15)


# -- SO_REUSEPORT (--workers) ------------------------------------------------------------------


class SocketKeepingReactor(MemoryReactorClock):
    """``adoptStreamPort`` as a real reactor does it: it keeps its own copy of the socket."""

    def __init__(self) -> None:
        super().__init__()
        self.sockets: list[socket.socket] = []

    def adoptStreamPort(self, fileno: int, addressFamily: Any, factory: Any) -> Any:
        self.sockets.append(socket.socket(fileno=os.dup(fileno)))
        return super().adoptStreamPort(fileno, addressFamily, factory)


@pytest.fixture
def keeping() -> Iterator[SocketKeepingReactor]:
    reactor = SocketKeepingReactor()
    yield reactor
    for s in reactor.sockets:
        s.close()


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT")
def test_two_listeners_share_a_port(keeping: SocketKeepingReactor) -> None:
    listen_reuseport(keeping, "tcp:0:interface=127.0.0.1", object())  # type: ignore[arg-type]
    port = keeping.sockets[0].getsockname()[1]
    description = f"tcp:{port}:interface=127.0.0.1:backlog=5"
    listen_reuseport(keeping, description, object())  # type: ignore[arg-type]
    assert keeping.sockets[1].getsockname() == ("127.0.0.1", port)
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # not without SO_REUSEPORT


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT")
def test_reuseport_port_in_use(keeping: SocketKeepingReactor) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        service = _service([f"tcp:{port}:interface=127.0.0.1"], keeping, reuseport=True)
        with pytest.raises(ListenError) as caught:
            service.startService()
    assert str(caught.value) == (
        f"cannot listen on tcp:{port}:interface=127.0.0.1: address already in use"
    )
    assert keeping.sockets == []


def test_reuseport_supported() -> None:
    assert reuseport_supported("tcp:3128") == hasattr(socket, "SO_REUSEPORT")
    assert not reuseport_supported("unix:/tmp/fwproxy.sock")
    assert not reuseport_supported("haproxy:tcp:3128")
    assert not reuseport_supported("tcp:notaport")
    with pytest.raises(ValueError, match="unix:/tmp/x.sock"):
        listen_reuseport(MemoryReactorClock(), "unix:/tmp/x.sock", object())  # type: ignore[arg-type]


def test_worker_command_line() -> None:
    supervisor = Supervisor(MemoryReactorClock(), 3, ["--config", "f.toml"])  # type: ignore[arg-type]
    command = supervisor.command(2)
    assert command[1:] == ["-m", WORKER_MODULE, "--worker-id", "2", "--config", "f.toml"]
    assert (PACKAGE / (WORKER_MODULE.split(".")[1] + ".py")).is_file()


# -- import order ------------------------------------------------------------------------------

#: the modules behind twistd fwproxy and fwproxy run
COMMAND_MODULES = ("cli", "tap", "service", "reuseport", "supervisor", "worker", "writes")
MODULES = frozenset(p.stem for p in PACKAGE.glob("*.py"))


def _imports(module: str) -> tuple[set[str], list[str]]:
    """(fwproxy modules ``module`` imports anywhere, those imported inside a function or an
    ``if``)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    everywhere: set[str] = set()
    nested: list[str] = []

    def visit(node: ast.AST, inside: bool) -> None:
        for child in ast.iter_child_nodes(node):
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module:
                names = [child.module] + [f"{child.module}.{a.name}" for a in child.names]
            found = {n.split(".")[1] for n in names if n.startswith("fwproxy.")}
            found &= MODULES
            everywhere.update(found)
            if inside:
                nested.extend(sorted(found))
            deeper = inside or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.If, ast.Try)
            )
            visit(child, deeper)

    visit(tree, False)
    return everywhere, nested


def test_command_modules_import_without_cycles() -> None:
    graph = {m: _imports(m)[0] for m in MODULES}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m == goal:
                return True
            if m not in seen:
                seen.add(m)
                todo.extend(graph.get(m, ()))
        return False

    cyclic = [m for m in COMMAND_MODULES if reaches(m, m)]
    assert cyclic == [], f"import cycles through {cyclic}"
    nested = {m: _imports(m)[1] for m in COMMAND_MODULES}
    assert all(not v for v in nested.values()), f"function-local imports: {nested}"
