# -*- test-case-name: tests.test_testing -*-
"""fwproxy's test kit for filter authors (and for fwproxy's own tests); see docs/testing.md.

Two ways to run a filter inside a whole proxy:

- live, with real sockets on loopback: the pytest fixture ``fwproxy`` (registered by the
  ``pytest11`` entry point, :mod:`fwproxy.testing.pytest_plugin`), or :func:`start_proxy` on a
  :func:`reactor_thread` without pytest; clients are ordinary blocking ones (urllib, curl);
- in memory, with no sockets and no real time: :class:`Harness` (a proxy on a
  ``MemoryReactorClock``, client and upstream connections completed by hand over
  :class:`FakeTransport`), and :class:`World`, which runs the network by itself for property
  tests.

Nothing here needs pytest except the plugin module.
"""

from fwproxy.testing.doubles import (
    ORIGIN_IP,
    OTHER_IP,
    RECORDERS,
    FailureLog,
    FakeResolver,
    FakeTransport,
    Recorder,
    address,
    recorder_filter,
)
from fwproxy.testing.live import (
    LOOPBACK_CONFIG,
    LiveProxy,
    NotAFilter,
    ReactorThread,
    RecordsTimeout,
    live_config,
    reactor_thread,
    start_proxy,
)
from fwproxy.testing.memory import (
    BASE_CONFIG,
    CLIENT_IP,
    PROXY_LOCAL,
    Client,
    Harness,
    Upstream,
    harnesses,
)
from fwproxy.testing.wire import OK5, field, get, split_response, status_of
from fwproxy.testing.world import RESPONSES, WORLD_CONFIG, World, horizon

__all__ = [
    "BASE_CONFIG",
    "CLIENT_IP",
    "LOOPBACK_CONFIG",
    "OK5",
    "ORIGIN_IP",
    "OTHER_IP",
    "PROXY_LOCAL",
    "RECORDERS",
    "RESPONSES",
    "WORLD_CONFIG",
    "Client",
    "FailureLog",
    "FakeResolver",
    "FakeTransport",
    "Harness",
    "LiveProxy",
    "NotAFilter",
    "ReactorThread",
    "Recorder",
    "RecordsTimeout",
    "Upstream",
    "World",
    "address",
    "field",
    "get",
    "harnesses",
    "horizon",
    "live_config",
    "reactor_thread",
    "recorder_filter",
    "split_response",
    "start_proxy",
    "status_of",
]
