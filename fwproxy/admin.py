# -*- test-case-name: tests.test_admin -*-
"""The admin listener: ``/healthz``, ``/readyz`` and ``/metrics``, apart from the proxy's port.

``[admin] listen`` (default ``tcp:9128:interface=127.0.0.1``; ``[]``: none) serves:

- ``/healthz``: ``200 ok`` while the process runs (a liveness probe);
- ``/readyz``: ``200 ready`` while the proxy listens and takes requests, ``503`` before its
  ports listen and from the moment it starts draining (a readiness probe: a load balancer or
  Kubernetes stops sending new clients while the ones in flight finish);
- ``/metrics``: the proxy's metrics (:mod:`fwproxy.metrics`) in Prometheus's text format, or
  OpenMetrics when the scraper asks for it, from the proxy's own registry.

:class:`AdminPages` decides every answer, sans-IO (method, path and ``Accept`` in; status,
content type and body out); :func:`admin_site` serves it with ``twisted.web`` on the proxy's
reactor, without an access log (probes come every few seconds). The proxy's own port keeps its
``/healthz`` (:mod:`fwproxy.local`): load balancers check the traffic port.
:class:`AdminServer` is one process's admin listener with the metrics it serves: its own
proxy's, or with ``--workers`` every process's (:mod:`fwproxy.metrics_shared`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from fwproxy.metrics import ProxyMetrics, registry_of
from fwproxy.metrics_shared import (
    SharedCollector,
    SharedMetrics,
    prepare_directory,
    remove_directory,
)

log = Logger()

#: the admin listener's pages
PATHS = (b"/healthz", b"/readyz", b"/metrics")

_TEXT = "text/plain; charset=utf-8"

Answer = tuple[int, str, bytes]


class AdminPages:
    """The admin listener's answers.

    :param registry: the proxy's metrics registry (never prometheus_client's global one).
    :param readiness: returns None when the proxy is ready, else why not (``"draining"``).
    """

    def __init__(self, registry: CollectorRegistry, readiness: Callable[[], str | None]) -> None:
        self.registry = registry
        self.readiness = readiness

    def answer(self, method: bytes, path: bytes, accept: str = "") -> Answer:
        """``(status, content type, body)`` for a request (HEAD: the body is not sent)."""
        path = path.split(b"?", 1)[0]
        if path not in PATHS:
            return 404, _TEXT, b"not found: try /healthz, /readyz or /metrics\n"
        if method not in (b"GET", b"HEAD"):
            return 405, _TEXT, b"method not allowed: GET or HEAD\n"
        if path == b"/healthz":
            return 200, _TEXT, b"ok\n"
        if path == b"/readyz":
            why = self.readiness()
            if why is not None:
                return 503, _TEXT, f"not ready: {why}\n".encode()
            return 200, _TEXT, b"ready\n"
        encoder, content_type = choose_encoder(accept)
        return 200, content_type, encoder(self.registry)


class AdminResource(Resource):
    """Serves :class:`AdminPages` (every path: the pages decide)."""

    isLeaf = True

    def __init__(self, pages: AdminPages) -> None:
        super().__init__()
        self.pages = pages

    def render(self, request: Request) -> bytes:  # type: ignore[override]
        accept = request.getHeader(b"accept")
        status, content_type, body = self.pages.answer(
            request.method, request.uri, accept.decode("latin-1") if accept else ""
        )
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        if status == 405:
            request.setHeader(b"Allow", b"GET, HEAD")
        return body


class AdminSite(Site):
    """A ``twisted.web`` site that logs nothing: probes would drown the proxy's log."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


def admin_site(pages: AdminPages, reactor: Any, timeout: float = 30.0) -> AdminSite:
    """The site serving ``pages`` on ``reactor`` (idle connections closed after ``timeout``)."""
    return AdminSite(AdminResource(pages), reactor=reactor, timeout=timeout)


class AdminListenError(Exception):
    """The admin listener cannot listen on ``description``: ``error`` says why."""

    def __init__(self, description: str, error: BaseException) -> None:
        super().__init__(f"{description}: {error}")
        self.description = description
        self.error = error


def listen_all(reactor: Any, descriptions: Sequence[str], site: Site) -> list[Any]:
    """Listen with ``site`` on every endpoint of ``descriptions`` (bind errors are synchronous
    for the stream endpoints Twisted has) and return the ports; if one cannot listen, stop
    those that did and raise :class:`AdminListenError`."""
    ports: list[Any] = []
    for description in descriptions:
        result: list[Any] = []
        try:
            serverFromString(reactor, description).listen(site).addBoth(result.append)
        except Exception as e:  # noqa: BLE001 - a bad string is reported like a bind error
            result.append(Failure(e))
        found = result[0] if result else None
        if isinstance(found, Failure) or found is None:
            for port in ports:
                port.stopListening()
            error = found.value if isinstance(found, Failure) else RuntimeError("no port")
            raise AdminListenError(description, error)
        ports.append(found)
    return ports


class AdminServer:
    """One process's admin listener, and where its metrics come from.

    :param metrics: this process's proxy's metrics.
    :param readiness: as :class:`AdminPages`'s.
    """

    def __init__(
        self, reactor: Any, metrics: ProxyMetrics, readiness: Callable[[], str | None]
    ) -> None:
        self.reactor = reactor
        self.metrics = metrics
        self.readiness = readiness
        self.ports: list[Any] = []
        #: this process's writer of shared metrics (``--workers``), and its directory
        self.shared: SharedMetrics | None = None
        self._made_dir: str | None = None

    def share(self, directory: str | None, prepare: bool = False) -> str:
        """Write this process's metrics to ``directory`` (``--workers``). With ``prepare``
        (the twistd process, before its workers start), empty it first, or make a temporary
        one when ``directory`` is None (removed by :meth:`stop`). Returns the directory."""
        if prepare:
            directory, made = prepare_directory(directory)
            self._made_dir = directory if made else None
        assert directory is not None
        self.shared = SharedMetrics(self.metrics, directory, self.reactor)
        self.shared.start()
        return directory

    def listen(self, descriptions: Sequence[str]) -> None:
        """Serve the pages on ``descriptions``: this proxy's metrics, or every process's
        when :meth:`share` was called.

        :raise AdminListenError: an endpoint cannot listen (none of them listens then).
        """
        registry = registry_of(self.metrics)
        if self.shared is not None:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(SharedCollector(self.shared.directory, self.shared))
        site = admin_site(AdminPages(registry, self.readiness), self.reactor)
        self.ports = listen_all(self.reactor, descriptions, site)
        for port in self.ports:
            addr = port.getHost()
            log.info(
                "fwproxy admin listener on {host}:{port} (/healthz /readyz /metrics)",
                host=getattr(addr, "host", ""),
                port=getattr(addr, "port", 0),
            )

    def stop(self) -> None:
        """Stop listening and writing (a last write first), and remove a temporary directory."""
        for port in self.ports:
            port.stopListening()
        self.ports = []
        if self.shared is not None:
            self.shared.stop()
            self.shared = None
        if self._made_dir is not None:
            remove_directory(self._made_dir)
            self._made_dir = None
