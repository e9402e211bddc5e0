"""The ``fwproxy`` command line without starting a proxy: ``fwproxy run`` takes the options of
``twistd fwproxy`` and hands twistd fwproxy's own service maker (no plugin search), ``fwproxy
--version``, and the service ``tap.makeService`` builds for the foreground and for a daemon.

Running it for real (a port, signals, installed copies) is in tests/integration/test_twistd.py
and tests/integration/test_cli_install.py."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import pytest
from twisted.application import app
from twisted.scripts.twistd import ServerOptions

import fwproxy
from fwproxy import cli, tap
from fwproxy.service import Foreground, ProxyService


@pytest.fixture
def conf(tmp_path: Path) -> str:
    path = tmp_path / "fw.toml"
    path.write_text('[proxy]\nlisten = ["tcp:3128:interface=127.0.0.1"]\n')
    return str(path)


@pytest.fixture
def no_plugins(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """twistd's plugin search finds nothing (an editable install hides the dropin); the calls
    are recorded."""
    calls: list[Any] = []

    def search(interface: Any, package: Any = None) -> list[Any]:
        calls.append(interface)
        return []

    monkeypatch.setattr(app.ServerOptions, "_getPlugins", staticmethod(search))
    return calls


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["--version"])
    assert caught.value.code == 0
    n = len(cli.compiled_modules())
    build = f"compiled build ({n} modules, mypyc)" if n else "pure-Python build"
    assert capsys.readouterr().out == f"fwproxy {fwproxy.__version__} ({build})\n"


@pytest.mark.skipif(
    os.environ.get("FWPROXY_EXPECT_COMPILED") != "1", reason="not the compiled build's test run"
)
def test_the_compiled_build_runs_compiled_code() -> None:
    # scripts/test runs the unit tests a second time on the mypyc build: they must not
    # silently import the pure-Python modules there
    compiled = cli.compiled_modules()
    assert "fwproxy.relay" in compiled and "fwproxy.http1" in compiled, compiled
    assert len(compiled) >= 15, compiled


def test_run_takes_the_twistd_fwproxy_options(conf: str, no_plugins: list[Any]) -> None:
    long = cli.run_options(
        ["--config", conf, "--listen", "tcp:1:interface=127.0.0.1", "--listen", "tcp:2"]
    )
    short = cli.run_options(["-c", conf, "-l", "tcp:1:interface=127.0.0.1", "-l", "tcp:2"])
    for options in (long, short):
        assert options["nodaemon"] and options["pidfile"] == ""  # foreground, no pid file
        sub = options.subOptions
        assert isinstance(sub, tap.Options)
        assert sub["config"] == conf and sub["workers"] == 1
        assert sub["listen"] == ["tcp:1:interface=127.0.0.1", "tcp:2"]
        assert sub["config_object"].listen == ("tcp:1:interface=127.0.0.1", "tcp:2")
    assert cli.run_options(["--workers", "2"]).subOptions["workers"] == 2
    assert cli.run_options(["-w", "3"]).subOptions["workers"] == 3
    assert no_plugins == []  # it never asked twistd's plugin search


def test_run_service_maker_is_the_dropins() -> None:
    dropin = importlib.import_module("twisted.plugins.fwproxy_plugin").fwproxy
    assert (cli.SERVICE_MAKER.module, cli.SERVICE_MAKER.tapname) == (dropin.module, "fwproxy")
    assert cli.SERVICE_MAKER.options is tap.Options is dropin.options
    assert cli.SERVICE_MAKER.makeService is tap.makeService


def test_twistd_fwproxy_and_fwproxy_run_parse_alike(conf: str) -> None:
    args = ["--config", conf, "-l", "tcp:9:interface=127.0.0.1", "-w", "2"]
    twistd = ServerOptions()
    twistd.parseOptions(["-n", "--pidfile=", "fwproxy", *args])
    ours = cli.run_options(args)
    assert type(ours.subOptions) is type(twistd.subOptions)
    keys = ("config", "listen", "workers")
    assert {k: ours.subOptions[k] for k in keys} == {k: twistd.subOptions[k] for k in keys}


def test_run_accepts_a_leading_double_dash(conf: str) -> None:
    assert cli.run_options(["--", "--config", conf]).subOptions["config"] == conf


def test_run_hands_the_options_to_twistd(
    conf: str, no_plugins: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[Any] = []
    monkeypatch.setattr(cli, "runApp", ran.append)
    assert cli.main(["run", "--config", conf]) == 0
    (options,) = ran
    assert options.subCommand == "run" and options.loadedPlugins == {"run": cli.SERVICE_MAKER}
    assert options.subOptions["config"] == conf


def test_run_unknown_option_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--bogus" in err and err.startswith("fwproxy run: ")


def test_run_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["run", "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: fwproxy run [--config FILE]")
    assert "--listen" in out and "--workers" in out


def test_run_bad_configuration_exits_with_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[timeouts]\nconnect = "soon"\n')
    with pytest.raises(SystemExit) as caught:
        cli.main(["run", "--config", str(bad)])
    assert str(caught.value).startswith(f"{bad}:2: timeouts.connect: ")
    assert "\n" not in str(caught.value)


def test_tap_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        tap.Options().parseOptions(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out.startswith(f"fwproxy {fwproxy.__version__} (Twisted ")


def test_make_service_in_the_foreground_and_as_a_daemon(conf: str) -> None:
    foreground = cli.run_options(["--config", conf])
    service = tap.makeService(foreground.subOptions)
    assert isinstance(service, Foreground)
    (proxy,) = list(service)
    assert isinstance(proxy, ProxyService) and proxy.supervisor is None

    daemon = ServerOptions()
    daemon.parseOptions(["--pidfile=", "fwproxy", "--config", conf, "--workers", "2"])
    proxy = tap.makeService(daemon.subOptions)
    assert isinstance(proxy, ProxyService)  # twistd reports its start-up errors itself
    assert proxy.supervisor is not None and proxy.supervisor.count == 2
