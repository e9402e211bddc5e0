# -*- test-case-name: tests.test_structure -*-
"""fwproxy: a forward (egress) HTTP proxy and a framework for building one, on Twisted.

Public names: :class:`ProxyFactory` (a protocol factory for any stream endpoint),
:func:`makeService` (an ``IService`` for an ``Application``), :func:`load_config` and
:class:`Config`, and the message types filters see (:class:`Request`, :class:`Response`,
:class:`Headers`), the :class:`TransactionRecord` observers see with its result codes
(``TCP_MISS``, ``TCP_TUNNEL``, ``TCP_DENIED``, ...). Filter contracts are in
:mod:`fwproxy.interfaces`; a test kit for filters in :mod:`fwproxy.testing`.
"""

from fwproxy.config import Config, ConfigError
from fwproxy.config import load as load_config
from fwproxy.config import loads as loads_config
from fwproxy.factory import ProxyFactory
from fwproxy.message import Headers, Request, Response
from fwproxy.record import (
    NONE_NONE,
    RESULT_CODES,
    TCP_DENIED,
    TCP_MISS,
    TCP_MISS_ABORTED,
    TCP_TUNNEL,
    TCP_TUNNEL_ABORTED,
    TransactionRecord,
)
from fwproxy.service import makeService

__version__ = "1.0.0"

__all__ = [
    "NONE_NONE",
    "RESULT_CODES",
    "TCP_DENIED",
    "TCP_MISS",
    "TCP_MISS_ABORTED",
    "TCP_TUNNEL",
    "TCP_TUNNEL_ABORTED",
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
