"""Fixtures shared by the in-memory protocol tests, built on :mod:`fwproxy.testing`.

``make`` makes :class:`fwproxy.testing.Harness` proxies (the test fails on a failure they logged
and the test did not take); ``h`` is one made with the defaults.
"""

from collections.abc import Callable, Iterator

import pytest

import fwproxy.testing.pytest_plugin
from fwproxy.testing import Harness, harnesses


def pytest_configure(config: pytest.Config) -> None:
    # an install of fwproxy made before it had the pytest11 entry point does not load the
    # plugin: load it here for the fixture tests (tests/test_testing.py checks the entry point)
    plugin = fwproxy.testing.pytest_plugin
    manager = config.pluginmanager
    if manager.get_plugin("fwproxy") is None and not manager.is_registered(plugin):
        manager.register(plugin, "fwproxy")


@pytest.fixture
def make() -> Iterator[Callable[..., Harness]]:
    with harnesses() as make:
        yield make


@pytest.fixture
def h(make: Callable[..., Harness]) -> Harness:
    return make()
