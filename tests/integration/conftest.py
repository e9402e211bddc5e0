"""Fixtures for the end-to-end tests: real ``twistd -n fwproxy`` processes on loopback
sockets, threaded origin and echo servers on ephemeral ports, and real curl.

Nothing here depends on /work/shared: the servers and the proxy process come from tests/support/
(shared with tests/attack), through ``fwp_origin.py`` and ``fwp_support.py`` beside this file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# tests/, for the shared ``support`` package
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fwp_origin import EchoServer, OriginServer
from fwp_support import (
    CURL,
    ProxyLauncher,
    curl,
    ipv6_loopback_available,
)
from support.servers import running


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


@pytest.fixture(scope="session", autouse=True)
def _curl_present() -> None:
    if not os.access(CURL, os.X_OK):
        pytest.fail(f"curl is required by the integration tests and was not found at {CURL}")


@pytest.fixture(scope="session")
def origin():
    """A threaded HTTP/1.1 origin on 127.0.0.1, ephemeral port; records what it receives."""
    with running(OriginServer("127.0.0.1")) as server:
        yield server


@pytest.fixture(scope="session")
def origin6():
    """The same origin on [::1]; skips when IPv6 loopback is unavailable."""
    if not ipv6_loopback_available():
        pytest.skip("IPv6 loopback (::1) is not available")
    with running(OriginServer("::1")) as server:
        yield server


@pytest.fixture(scope="session")
def echo():
    """A raw TCP echo server on 127.0.0.1, ephemeral port."""
    with running(EchoServer("127.0.0.1")) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_records(request: pytest.FixtureRequest):
    for name in ("origin", "origin6"):
        if name in request.fixturenames:
            request.getfixturevalue(name).clear()
    yield


@pytest.fixture
def proxy(tmp_path: Path):
    """A factory of running proxies, all stopped (SIGTERM, then SIGKILL) at teardown.

    ``proxy.start(config_text, host=..., port=..., args=[...])`` runs ``twistd -n --pidfile=
    fwproxy --config FILE`` with PYTHONPATH set to the repository root and waits (at most
    10 s) until ``host:port`` accepts; ``proxy.start_with(**proxy_config_options)`` does the
    same on a free port with an access log file. Each returns a ``ProxyProcess`` with
    ``host``, ``port``, ``url``, ``output()`` (twistd's captured stdout and stderr) and
    ``access_log``.
    """
    launcher = ProxyLauncher(tmp_path)
    yield launcher
    launcher.stop_all()


@pytest.fixture
def run_curl(tmp_path: Path):
    """``run_curl(*args, max_time=30)``: real curl, returning a ``CurlResult``."""

    def run(*args: str, max_time: float = 30):
        return curl(*args, tmp=tmp_path / "curl", max_time=max_time)

    return run
