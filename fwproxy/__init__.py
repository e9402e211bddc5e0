# -*- test-case-name: tests.test_structure -*-
"""fwproxy: a forward (egress) HTTP proxy and a framework for building one, on Twisted.

Public names: :class:`ProxyFactory` (a protocol factory for any stream endpoint),
:func:`makeService` (an ``IService`` for an ``Application``), :func:`load_config` and
:class:`Config`, and the message types filters see (:class:`Request`, :class:`Response`,
:class:`Headers`). Filter contracts are in :mod:`fwproxy.interfaces`.
"""

from fwproxy.config import Config, ConfigError
from fwproxy.config import load as load_config
from fwproxy.config import loads as loads_config
from fwproxy.message import Headers, Request, Response
from fwproxy.record import TransactionRecord
from fwproxy.server import ProxyFactory
from fwproxy.service import makeService

__version__ = "1.0.0"

__all__ = [
    "Config",
    "ConfigError",
    "Headers",
    "ProxyFactory",
    "Request",
    "Response",
    "TransactionRecord",
    "load_config",
    "loads_config",
    "makeService",
]
