# -*- test-case-name: tests.test_service -*-
"""An :class:`IService` that runs a proxy on the configured endpoints, for any Application.

``makeService(config)`` is what ``twistd fwproxy`` runs and what an embedding application adds
to its own service hierarchy. Listening happens in ``startService``; a port that cannot be
bound raises there, so ``twistd`` fails at start-up instead of running without a listener.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from fwproxy.config import Config
from fwproxy.server import ProxyFactory

log = Logger()


class ProxyService(Service):
    """Listens on every ``config.listen`` endpoint with one shared :class:`ProxyFactory`."""

    def __init__(self, config: Config, reactor: Any = None, factory: ProxyFactory | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.config = config
        self.reactor = reactor
        self.factory = factory if factory is not None else ProxyFactory(config, reactor)
        self.ports: list[Any] = []

    def startService(self) -> None:
        super().startService()
        for description in self.config.listen:
            endpoint = serverFromString(self.reactor, description)
            d = endpoint.listen(self.factory)
            failure: list[Any] = []
            d.addCallbacks(self._listening, failure.append)
            if failure:  # bind errors are synchronous for TCP: fail start-up loudly
                failure[0].raiseException()

    def _listening(self, port: Any) -> None:
        self.ports.append(port)
        addr = port.getHost()
        host, portno = getattr(addr, "host", ""), getattr(addr, "port", 0)
        self.factory.listening.append((host, portno))
        log.info("fwproxy listening on {host}:{port}", host=host, port=portno)

    def stopService(self) -> Deferred[Any] | None:
        super().stopService()
        ds = [d for d in (p.stopListening() for p in self.ports) if d is not None]
        self.ports = []
        return DeferredList(ds) if ds else None


def makeService(config: Config, reactor: Any = None) -> ProxyService:
    """An ``IService`` running a proxy with ``config``; add it to your ``Application``."""
    return ProxyService(config, reactor)
