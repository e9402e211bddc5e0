"""Tests for :mod:`fwproxy.watch` and ``[proxy] watch_config``: a ConfigMap update made the way
the kubelet makes it (new timestamped directory, ``..data`` symlink renamed over the old one) is
picked up like SIGHUP, on a MemoryReactorClock, with real files in a temporary directory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock

from fwproxy.config import Config, ConfigError, load, loads
from fwproxy.service import ProxyService
from fwproxy.watch import INTERVAL, ConfigWatcher, identity

NAME = "fwproxy.toml"


class ConfigMapDir:
    """A directory laid out as the kubelet lays out a ConfigMap volume."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0
        self.path = root / NAME

    def publish(self, text: str) -> None:
        """Write ``text`` as the kubelet's atomic writer does an update."""
        self.generation += 1
        new = self.root / f"..2026_11_01_00_00_0{self.generation}.{self.generation}"
        new.mkdir()
        (new / NAME).write_text(text)
        data = self.root / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        tmp = self.root / "..data_tmp"
        os.symlink(new.name, tmp)
        os.rename(tmp, data)  # the swap: atomic
        if not self.path.is_symlink():
            os.symlink(f"..data/{NAME}", self.path)
        if old is not None:
            shutil.rmtree(self.root / old)


class Calls:
    def __init__(self, raises: bool = False) -> None:
        self.count = 0
        self.raises = raises

    def __call__(self) -> None:
        self.count += 1
        if self.raises:
            raise RuntimeError("reload failed")


@pytest.fixture
def configmap(tmp_path: Path) -> ConfigMapDir:
    d = ConfigMapDir(tmp_path)
    d.publish("[proxy]\nwatch_config = true\n")
    return d


def test_symlink_swap_is_one_change(configmap: ConfigMapDir) -> None:
    reactor, calls = MemoryReactorClock(), Calls()
    watcher = ConfigWatcher(str(configmap.path), reactor, calls)
    watcher.start()
    reactor.advance(INTERVAL)
    assert calls.count == 0
    before = identity(str(configmap.path))
    configmap.publish("[proxy]\nwatch_config = true\n")  # same bytes, new file
    after = identity(str(configmap.path))
    assert before is not None and after is not None and before.target != after.target
    reactor.advance(INTERVAL - 0.1)
    assert calls.count == 0  # not before the next look
    reactor.advance(0.1)
    assert calls.count == 1
    reactor.advance(INTERVAL * 5)
    assert calls.count == 1  # once per change
    configmap.publish('[proxy]\nlisten = ["tcp:3128"]\n')
    reactor.advance(INTERVAL)
    assert calls.count == 2


def test_rewrite_in_place_is_a_change(tmp_path: Path) -> None:
    path = tmp_path / NAME
    path.write_text("a = 1\n")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    reactor, calls = MemoryReactorClock(), Calls()
    watcher = ConfigWatcher(str(path), reactor, calls, interval=5)
    watcher.start()
    path.write_text("a = 2\n")  # same size, same inode: the modification time tells
    reactor.advance(5)
    assert calls.count == 1


def test_missing_file_is_not_a_change(tmp_path: Path) -> None:
    path = tmp_path / NAME
    path.write_text("a = 1\n")
    reactor, calls = MemoryReactorClock(), Calls()
    watcher = ConfigWatcher(str(path), reactor, calls)
    watcher.start()
    moved = tmp_path / "moved"
    path.rename(moved)
    reactor.advance(INTERVAL)
    assert calls.count == 0 and watcher.running
    moved.rename(path)  # back as it was: still no change
    reactor.advance(INTERVAL)
    assert calls.count == 0
    path.write_text("a = 22\n")
    reactor.advance(INTERVAL)
    assert calls.count == 1


def test_a_failing_reload_does_not_stop_the_watch(configmap: ConfigMapDir) -> None:
    reactor, calls = MemoryReactorClock(), Calls(raises=True)
    watcher = ConfigWatcher(str(configmap.path), reactor, calls)
    watcher.start()
    configmap.publish("x = 1\n")
    reactor.advance(INTERVAL)
    configmap.publish("x = 2\n")
    reactor.advance(INTERVAL)
    assert calls.count == 2 and watcher.running


def test_stop_stops_looking(configmap: ConfigMapDir) -> None:
    reactor, calls = MemoryReactorClock(), Calls()
    watcher = ConfigWatcher(str(configmap.path), reactor, calls)
    watcher.start()
    watcher.stop()
    assert not watcher.running and not reactor.getDelayedCalls()
    configmap.publish("x = 1\n")
    reactor.advance(INTERVAL * 3)
    assert calls.count == 0


# -- [proxy] watch_config --------------------------------------------------------------------


def test_watch_config_defaults_off_and_parses() -> None:
    assert Config().watch_config is False
    assert loads("[proxy]\nwatch_config = true\n").watch_config is True
    assert loads("[proxy]\nwatch_config = false\n").watch_config is False


def test_watch_config_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError) as e:
        loads('[proxy]\nlisten = ["tcp:3128"]\nwatch_config = "yes"\n', "etc/x.toml")
    assert e.value.problems == [
        "etc/x.toml:3: proxy.watch_config: expected true or false, got 'yes'"
    ]


RULES = """
[proxy]
listen = ["tcp:3128:interface=127.0.0.1"]
watch_config = {watch}

[acl.office]
src = ["{office}"]

[access]
rules = ["allow office", "deny all"]
"""


def _rules(office: str, watch: str = "true") -> str:
    return RULES.format(office=office, watch=watch)


class Reloads:
    """``reload`` for the service: reads the file, counts the reads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0

    def __call__(self) -> Config:
        self.count += 1
        return load(str(self.path))


def _service(configmap: ConfigMapDir, **kwargs: Any) -> tuple[ProxyService, Reloads, Any]:
    reactor = MemoryReactorClock()
    reloads = Reloads(configmap.path)
    service = ProxyService(load(str(configmap.path)), reactor, reload=reloads, **kwargs)
    service.startService()
    return service, reloads, reactor


def _office(service: ProxyService) -> str:
    return str(service.factory.config.acls["office"].networks[0])  # type: ignore[attr-defined]


def test_configmap_update_reloads_the_service(configmap: ConfigMapDir) -> None:
    configmap.publish(_rules("10.0.0.0/8"))
    service, reloads, reactor = _service(configmap)
    assert service.watcher is not None and service.watcher.path == str(configmap.path)
    configmap.publish(_rules("192.168.0.0/16"))
    reactor.advance(INTERVAL)
    assert reloads.count == 1 and _office(service) == "192.168.0.0/16"
    # an invalid update is rejected as SIGHUP rejects it, once: the running one is kept
    configmap.publish(_rules("192.168.0.300/16"))
    reactor.advance(INTERVAL * 3)
    assert reloads.count == 2 and _office(service) == "192.168.0.0/16"
    # turning it off in the file stops the watch
    configmap.publish(_rules("172.16.0.0/12", watch="false"))
    reactor.advance(INTERVAL)
    assert reloads.count == 3 and _office(service) == "172.16.0.0/12"
    assert service.watcher is None and not reactor.getDelayedCalls()
    service.stopService()


def test_no_watch_unless_asked(configmap: ConfigMapDir) -> None:
    configmap.publish(_rules("10.0.0.0/8", watch="false"))
    service, reloads, reactor = _service(configmap)
    configmap.publish(_rules("192.168.0.0/16", watch="false"))
    reactor.advance(INTERVAL * 3)
    assert service.watcher is None and reloads.count == 0 and _office(service) == "10.0.0.0/8"
    service.stopService()


def test_stop_service_stops_the_watch(configmap: ConfigMapDir) -> None:
    configmap.publish(_rules("10.0.0.0/8"))
    service, reloads, reactor = _service(configmap)
    service.stopService()
    configmap.publish(_rules("192.168.0.0/16"))
    reactor.advance(INTERVAL * 3)
    assert service.watcher is None and reloads.count == 0


def test_a_worker_does_not_watch(configmap: ConfigMapDir) -> None:
    """A ``--workers`` worker (SO_REUSEPORT, no supervisor of its own) gets its reloads as
    SIGHUP from the twistd process, which watches."""
    configmap.publish(_rules("10.0.0.0/8"))
    reactor = MemoryReactorClock()
    config = load(str(configmap.path)).with_listen([])  # nothing to bind in a unit test
    service = ProxyService(config, reactor, reload=Reloads(configmap.path), reuseport=True)
    service.startService()
    assert service.watcher is None
    service.stopService()
