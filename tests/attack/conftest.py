"""Fixtures for the attack and fault tests: a recording origin, an echo server and a blackhole on
loopback, and real ``twistd -n fwproxy`` processes (see :mod:`support`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.servers import running

from .support import BlackholeServer, EchoServer, OriginServer, ProxyLauncher


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


@pytest.fixture(scope="session")
def origin():
    """A threaded HTTP/1.1 keep-alive origin on 127.0.0.1 that records every request exactly."""
    with running(OriginServer("127.0.0.1")) as server:
        yield server


@pytest.fixture(scope="session")
def echo():
    with running(EchoServer("127.0.0.1", idle_timeout=60)) as server:
        yield server


@pytest.fixture(scope="session")
def blackhole():
    with running(BlackholeServer("127.0.0.1")) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_origin(request: pytest.FixtureRequest):
    if "origin" in request.fixturenames:
        request.getfixturevalue("origin").clear()
    yield


@pytest.fixture
def proxies(tmp_path: Path):
    """``proxies.start(config_text=None, **proxy_config_options)``: real proxies, all stopped
    at the end of the test."""
    launcher = ProxyLauncher(tmp_path)
    yield launcher
    launcher.stop_all()
