"""Tests for :mod:`fwproxy.admin` (the pages, sans-IO; the ``twisted.web`` site on an in-memory
transport) and the admin listener of :class:`fwproxy.service.ProxyService` on a
``MemoryReactorClock``; ``[admin]`` in the configuration. With real sockets and processes:
tests/integration/test_admin_listener.py."""

from __future__ import annotations

import errno
import gc
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher

from fwproxy.admin import AdminPages, admin_site
from fwproxy.config import AdminConfig, ConfigError, load, loads
from fwproxy.metrics import ProxyMetrics, registry_of
from fwproxy.metrics_shared import METRICS_DIR_ENV
from fwproxy.record import TransactionRecord
from fwproxy.service import ListenError, ProxyService
from fwproxy.testing import FakeTransport, address


def pages(ready: str | None = None) -> AdminPages:
    m = ProxyMetrics()
    m.transactionFinished(TransactionRecord("10.0.0.1", "GET", "http://a/", result="TCP_MISS"))
    return AdminPages(registry_of(m), lambda: ready)


# -- the pages, sans-IO -------------------------------------------------------------------------


def test_healthz():
    assert pages("draining").answer(b"GET", b"/healthz") == (
        200,
        "text/plain; charset=utf-8",
        b"ok\n",
    )


@pytest.mark.parametrize(
    "why, status, body",
    [(None, 200, b"ready\n"), ("draining", 503, b"not ready: draining\n")],
)
def test_readyz(why, status, body):
    assert pages(why).answer(b"GET", b"/readyz")[::2] == (status, body)


def test_metrics_in_prometheus_text():
    status, content_type, body = pages().answer(b"GET", b"/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    (sample,) = families["fwproxy_transactions"].samples
    assert sample.labels == {"result": "TCP_MISS", "method": "GET"} and sample.value == 1


def test_metrics_in_openmetrics_when_asked():
    status, content_type, body = pages().answer(
        b"GET", b"/metrics", "application/openmetrics-text; version=1.0.0"
    )
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


@pytest.mark.parametrize(
    "method, path, status",
    [
        (b"HEAD", b"/healthz", 200),
        (b"GET", b"/readyz?verbose=1", 200),
        (b"GET", b"/", 404),
        (b"GET", b"/metrics/x", 404),
        (b"POST", b"/healthz", 405),
        (b"DELETE", b"/metrics", 405),
    ],
)
def test_other_paths_and_methods(method, path, status):
    assert pages().answer(method, path)[0] == status


# -- the site, on an in-memory transport --------------------------------------------------------


def _exchange(site: Any, request: bytes) -> bytes:
    proto = site.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(request)
    return transport.value()


def test_the_site_serves_the_pages_and_logs_nothing():
    reactor = MemoryReactorClock()
    site = admin_site(pages("not listening"), reactor)
    logged: list[Any] = []
    site._logFile = type("L", (), {"write": lambda self, line: logged.append(line)})()  # type: ignore[assignment]
    out = _exchange(site, b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 503 ")
    assert b"\r\nCache-Control: no-store\r\n" in out and out.endswith(b"not ready: not listening\n")
    out = _exchange(site, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"\r\n\r\n")  # no body
    out = _exchange(site, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 405 ") and b"\r\nAllow: GET, HEAD\r\n" in out
    assert logged == []
    assert site.timeOut == 30.0 and site.reactor is reactor


# -- in the service -----------------------------------------------------------------------------


class BusyReactor(MemoryReactorClock):
    """Listens like a MemoryReactor, except on ``busy``: the bind error of a real one; records
    the ports stopped."""

    def __init__(self, busy: int) -> None:
        super().__init__()
        self.busy = busy
        self.stopped: list[int] = []

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        if port == self.busy:
            error = OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))
            raise CannotListenError(interface, port, error)
        listening = super().listenTCP(port, factory, backlog, interface)
        real_stop = listening.stopListening
        listening.stopListening = lambda: (self.stopped.append(port), real_stop())[1]
        return listening


@pytest.fixture
def caplog_twisted() -> Iterator[list[dict]]:
    """The events logged through ``twisted.logger`` during the test."""
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


@pytest.fixture
def started() -> Iterator[Callable[[ProxyService], ProxyService]]:
    """Start a service (as the proxy's own process, ``signals=True``, it installs signal
    handlers and freezes the garbage collector: both are undone), stopped at the end."""
    services: list[ProxyService] = []

    def start(service: ProxyService) -> ProxyService:
        services.append(service)
        try:
            service.startService()
        finally:
            gc.unfreeze()
        return service

    yield start
    for service in services:
        if service.running:
            service.stopService()
    gc.unfreeze()


PROXY = '[proxy]\nlisten = ["tcp:3128:interface=127.0.0.1"]\n'


def _ports(reactor: MemoryReactorClock) -> list[tuple[int, str]]:
    return [(port, interface) for port, _, _, interface in reactor.tcpServers]


def test_the_default_admin_listener_starts_first_in_the_proxys_own_process(started):
    reactor = MemoryReactorClock()
    service = ProxyService(loads(PROXY), reactor, signals=True)
    assert service.readiness() == "not listening"
    started(service)
    assert _ports(reactor) == [(9128, "127.0.0.1"), (3128, "127.0.0.1")]
    assert service.readiness() is None
    site = reactor.tcpServers[0][1]
    readyz = b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
    assert _exchange(site, readyz).startswith(b"HTTP/1.1 200 ")
    # a client in the middle of a request: stopping drains, and says so on /readyz
    client = service.factory.buildProtocol(None)
    client.makeConnection(FakeTransport(address("127.0.0.1", 3128), address("127.0.0.1", 5)))
    client.dataReceived(b"GET http://example.com/ HTTP/1.1\r\n")
    d = service.stopService()
    assert not d.called and service.readiness() == "draining"
    assert _exchange(site, readyz).startswith(b"HTTP/1.1 503 ")
    assert service.admin.ports  # still serving while draining
    reactor.advance(service.config.timeouts.drain)
    assert d.called and service.admin.ports == []


def test_an_embedding_application_gets_no_default_admin_listener():
    reactor = MemoryReactorClock()
    ProxyService(loads(PROXY), reactor).startService()
    assert _ports(reactor) == [(3128, "127.0.0.1")]


def test_an_admin_listener_in_the_file_starts_in_an_embedding_application_too():
    reactor = MemoryReactorClock()
    config = loads(PROXY + '[admin]\nlisten = ["tcp:9200:interface=127.0.0.1", "tcp6:9201"]\n')
    ProxyService(config, reactor).startService()
    assert _ports(reactor) == [(9200, "127.0.0.1"), (9201, "::"), (3128, "127.0.0.1")]


def test_no_admin_listener(started):
    reactor = MemoryReactorClock()
    started(ProxyService(loads(PROXY + "[admin]\nlisten = []\n"), reactor, signals=True))
    assert _ports(reactor) == [(3128, "127.0.0.1")]


def test_a_busy_admin_port_in_the_file_stops_start_up(started):
    reactor = BusyReactor(busy=9128)
    config = loads(PROXY + '[admin]\nlisten = ["tcp:9128:interface=127.0.0.1"]\n')
    service = ProxyService(config, reactor, signals=True)
    with pytest.raises(ListenError) as caught:
        started(service)
    assert str(caught.value) == (
        "cannot listen on tcp:9128:interface=127.0.0.1 ([admin] listen): address already in use"
    )
    assert _ports(reactor) == []  # the proxy never listened


def test_a_busy_default_admin_port_is_a_warning(started, caplog_twisted: list[dict]):
    reactor = BusyReactor(busy=9128)
    service = started(ProxyService(loads(PROXY), reactor, signals=True))
    assert _ports(reactor) == [(3128, "127.0.0.1")] and service.readiness() is None
    (event,) = [e for e in caplog_twisted if "no admin listener" in e.get("log_format", "")]
    assert "address already in use" in str(event["e"])


def test_a_busy_proxy_port_closes_the_admin_listener(started):
    reactor = BusyReactor(busy=3128)
    service = ProxyService(loads(PROXY), reactor, signals=True)
    with pytest.raises(ListenError):
        started(service)
    assert _ports(reactor) == [(9128, "127.0.0.1")] and reactor.stopped == [9128]


class FakeSupervisor:
    def __init__(self) -> None:
        self.started_with: str | None = None

    def start(self) -> None:
        self.started_with = os.environ.get(METRICS_DIR_ENV)

    def signal(self, signum: int) -> None:
        pass

    def stop(self) -> Any:
        from twisted.internet.defer import succeed

        return succeed(None)


def test_with_workers_the_metrics_go_through_a_shared_directory(started, monkeypatch, tmp_path):
    monkeypatch.delenv(METRICS_DIR_ENV, raising=False)
    (tmp_path / "counter_1.db").write_bytes(b"from an earlier run")
    reactor = MemoryReactorClock()
    config = loads(PROXY + f'[admin]\nlisten = ["tcp:9128"]\nmetrics_dir = "{tmp_path}"\n')
    supervisor = FakeSupervisor()
    service = ProxyService(config, reactor, signals=True, supervisor=supervisor)  # type: ignore[arg-type]
    started(service)
    assert supervisor.started_with == str(tmp_path)  # what the workers are told
    assert not (tmp_path / "counter_1.db").exists()
    assert (tmp_path / f"counter_{os.getpid()}.db").exists()
    site = reactor.tcpServers[0][1]
    out = _exchange(site, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"fwproxy_active_connections 0.0" in out
    service.stopService()
    assert not (tmp_path / f"gauge_livesum_{os.getpid()}.db").exists()


def test_without_a_metrics_dir_a_temporary_one_is_made_and_removed(started, monkeypatch):
    monkeypatch.delenv(METRICS_DIR_ENV, raising=False)
    supervisor = FakeSupervisor()
    config = loads(PROXY + '[admin]\nlisten = ["tcp:9128"]\n')
    service = started(
        ProxyService(config, MemoryReactorClock(), signals=True, supervisor=supervisor)
    )  # type: ignore[arg-type]
    directory = supervisor.started_with
    assert directory is not None and os.path.basename(directory).startswith("fwproxy-metrics-")
    assert os.path.exists(os.path.join(directory, f"counter_{os.getpid()}.db"))
    service.stopService()
    assert not os.path.exists(directory)


def test_a_worker_writes_its_metrics_and_serves_nothing(tmp_path: Path):
    reactor = MemoryReactorClock()  # a worker: SO_REUSEPORT sockets, adopted by the reactor
    config = loads('[proxy]\nlisten = ["tcp:0:interface=127.0.0.1"]\n')
    service = ProxyService(config, reactor, reuseport=True, metrics_dir=str(tmp_path))
    service.startService()
    try:
        assert len(reactor.adoptedPorts) == 1 and reactor.tcpServers == []  # no admin port
        assert (tmp_path / f"counter_{os.getpid()}.db").exists()
        assert service.admin.shared is not None and service.admin.ports == []
    finally:
        service.stopService()
    assert service.admin.shared is None


# -- [admin] in the configuration ----------------------------------------------------------------


def test_admin_defaults():
    admin = loads("").admin
    assert admin == AdminConfig(("tcp:9128:interface=127.0.0.1",), None, False)
    assert loads("[admin]\nlisten = []\n").admin.listen == ()
    assert loads("[admin]\nlisten = []\n").admin.listen_required


def test_admin_problems_are_one_line_each(tmp_path: Path):
    text = (
        "[admin]\n"
        'listen = ["tcp:9128", "tcp:99999", "nonsense:1"]\n'
        f'metrics_dir = "{tmp_path / "missing"}"\n'
        "colour = 1\n"
    )
    with pytest.raises(ConfigError) as e:
        loads(text, "f.toml")
    assert (
        e.value.problems[0]
        == "f.toml:2: admin.listen: 'tcp:99999' is not a valid endpoint: port 99999 is out of range (0-65535)"
    )
    assert e.value.problems[1].startswith(
        "f.toml:2: admin.listen: 'nonsense:1' is not a valid endpoint: "
    )
    assert (
        e.value.problems[2]
        == f"f.toml:3: admin.metrics_dir: directory '{tmp_path / 'missing'}' does not exist"
    )
    assert e.value.problems[3] == "f.toml:4: admin.colour: unknown key (known: listen, metrics_dir)"
    assert len(e.value.problems) == 4
    with pytest.raises(ConfigError) as e:
        loads("[admin]\nlisten = 9128\n", "f.toml")
    assert e.value.problems == [
        'f.toml:2: admin.listen: expected a list of endpoint strings like "tcp:9128" ([]: off)'
    ]


def test_a_relative_metrics_dir_is_the_configuration_files_neighbour(tmp_path: Path):
    (tmp_path / "metrics").mkdir()
    conf = tmp_path / "fw.toml"
    conf.write_text('[admin]\nmetrics_dir = "metrics"\n')
    assert load(str(conf)).admin.metrics_dir == str(tmp_path / "metrics")
