# -*- test-case-name: tests.test_cli -*-
"""The ``fwproxy`` command: ``fwproxy check-config FILE``, ``fwproxy run [OPTIONS]``,
``fwproxy ca init DIR``, ``fwproxy --version``.

``fwproxy run`` takes exactly the options of ``twistd fwproxy`` (``--config``, ``--listen``,
``--workers``) and runs twistd in this process, in the foreground, without a pid file: logs on
standard output, for containers and service managers. It hands twistd fwproxy's own
``tap.Options``/``makeService`` instead of asking twistd to find the ``twisted/plugins`` dropin,
so it works wherever ``fwproxy`` is importable, editable installs included (setuptools' editable
finder does not expose the dropin to ``twisted.plugin``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any

from twisted.application.service import ServiceMaker
from twisted.python import usage
from twisted.scripts.twistd import ServerOptions, runApp

from fwproxy import __version__, cacert
from fwproxy import protocol as _request_path  # noqa: F401  (for compiled_modules)
from fwproxy.config import ConfigError, load

#: what ``fwproxy run`` hands to twistd as its sub-command (as the dropin does for ``twistd``)
SERVICE_MAKER = ServiceMaker("fwproxy", "fwproxy.tap", "A forward (egress) HTTP proxy", "fwproxy")

#: twistd's own options for ``fwproxy run``: foreground, no pid file
TWISTD_ARGS = ["--nodaemon", "--pidfile="]


class RunOptions(ServerOptions):  # type: ignore[misc,valid-type]
    """twistd's options with one sub-command, ``run``: fwproxy's ``tap.Options``."""

    synopsis = "Usage: fwproxy"

    @property
    def subCommands(self) -> Iterator[tuple[str, None, Any, str]]:
        # twistd's runner makes the service with loadedPlugins[subCommand].makeService
        self.loadedPlugins = {"run": SERVICE_MAKER}
        yield ("run", None, lambda: SERVICE_MAKER.options(), SERVICE_MAKER.description)


def run_options(args: list[str]) -> RunOptions:
    """The twistd configuration for ``fwproxy run ARGS``; raises ``usage.UsageError``, or
    ``SystemExit`` for ``--help`` and an invalid proxy configuration."""
    if args[:1] == ["--"]:
        args = args[1:]
    options = RunOptions()
    options.parseOptions([*TWISTD_ARGS, "run", *args])
    return options


def run(args: list[str]) -> int:
    """``fwproxy run ARGS``: twistd, in this process, until the proxy stops."""
    try:
        options = run_options(args)
    except usage.UsageError as e:
        print(f"fwproxy run: {e} (see fwproxy run --help)", file=sys.stderr)
        return 2
    runApp(options)
    return 0


def check_config(path: str | None, strict: bool = False) -> int:
    try:
        config = load(path)
    except ConfigError as e:
        for line in e.problems:
            print(line, file=sys.stderr)
        return 1
    for w in config.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if strict and config.warnings:
        return 1
    print(
        f"{config.source}: OK ({len(config.access.rules)} rules, listening on "
        f"{', '.join(config.listen)})"
    )
    return 0


def ca_init(directory: str) -> int:
    """``fwproxy ca init DIR``: a new interception CA (:mod:`fwproxy.cacert`)."""
    try:
        cert, key = cacert.init(directory)
    except cacert.CAError as e:
        print(f"fwproxy ca init: {e}", file=sys.stderr)
        return 1
    print(f"{cert}: the CA certificate, to install in the clients' trust stores")
    print(f"{key}: its private key (0600): keep it secret")
    return 0


def compiled_modules() -> list[str]:
    """The modules of the request path running as compiled code (the optional mypyc build:
    see setup.py); empty for the pure-Python build."""
    return sorted(
        name
        for name, module in list(sys.modules.items())
        if name.startswith("fwproxy.")
        and (getattr(module, "__file__", None) or "").endswith((".so", ".pyd"))
    )


class _Version(argparse.Action):
    """``--version``: the version and which build (looked up only when asked)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and build, exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        n = len(compiled_modules())
        build = f"compiled build ({n} modules, mypyc)" if n else "pure-Python build"
        print(f"fwproxy {__version__} ({build})")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fwproxy", description="fwproxy, a forward HTTP proxy")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True)
    cc = sub.add_parser("check-config", help="validate a configuration file and exit")
    cc.add_argument("file", nargs="?", help="the TOML file (default: the embedded default)")
    cc.add_argument("--strict", action="store_true", help="treat warnings as errors")
    sub.add_parser(
        "run",
        add_help=False,
        help="run the proxy in the foreground, as twistd -n fwproxy does; it takes the same "
        "options: --config FILE, --listen ENDPOINT, --workers N (fwproxy run --help)",
    )
    ca = sub.add_parser("ca", help="the interception CA: fwproxy ca init DIR")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True)
    ca_init = ca_sub.add_parser("init", help="make DIR/ca.pem and DIR/ca.key (never overwritten)")
    ca_init.add_argument("dir", help="the directory (made 0700 if missing)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["run"]:  # its options are twistd's to parse (argparse would take them)
        return run(args[1:])
    ns = _parser().parse_args(args)
    if ns.command == "check-config":
        return check_config(ns.file, ns.strict)
    if ns.command == "ca":
        return ca_init(ns.dir)
    return run([])  # pragma: no cover - "run" was dispatched above


if __name__ == "__main__":
    sys.exit(main())
