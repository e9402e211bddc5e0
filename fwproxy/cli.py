# -*- test-case-name: tests.test_cli -*-
"""The ``fwproxy`` command: ``fwproxy check-config FILE``, ``fwproxy run [twistd options]``."""

from __future__ import annotations

import argparse
import os
import sys

from fwproxy.config import ConfigError, load


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fwproxy", description="fwproxy, a forward HTTP proxy")
    sub = parser.add_subparsers(dest="command", required=True)
    cc = sub.add_parser("check-config", help="validate a configuration file and exit")
    cc.add_argument("file", nargs="?", help="the TOML file (default: the embedded default)")
    cc.add_argument("--strict", action="store_true", help="treat warnings as errors")
    run = sub.add_parser("run", help="run the proxy in the foreground (twistd -n fwproxy ...)")
    run.add_argument("args", nargs=argparse.REMAINDER, help="options for twistd fwproxy")
    ns = parser.parse_args(argv)
    if ns.command == "check-config":
        return check_config(ns.file, ns.strict)
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    if not os.path.exists(twistd):
        twistd = "twistd"
    os.execvp(twistd, [twistd, "-n", "--pidfile=", "fwproxy", *ns.args])
    return 0  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
