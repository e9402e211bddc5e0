# -*- test-case-name: tests.test_tap -*-
"""``twistd fwproxy``: command-line options and the service they make."""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from fwproxy.config import Config, ConfigError, load
from fwproxy.service import makeService as _makeService


class Options(usage.Options):
    synopsis = "[--config FILE] [--listen ENDPOINT ...]"
    longdesc = (
        "Run fwproxy, a forward (egress) HTTP proxy. With no --config it runs on the safe "
        "embedded default: 127.0.0.1:3128, loopback clients only, CONNECT only to 443."
    )
    optParameters = [
        ["config", "c", None, "The TOML configuration file (default: the embedded default)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """A Twisted endpoint to listen on (repeatable; overrides the file's [proxy] listen),
        e.g. tcp:3128, tcp6:3128:interface=\\:\\:1, unix:/run/fwproxy.sock, systemd:domain=INET:index=0,
        haproxy:tcp:3128."""
        self["listen"].append(endpoint)

    opt_l = opt_listen

    def postOptions(self) -> None:
        try:
            config = load(self["config"])
            if self["listen"]:
                from fwproxy.config import _validate_endpoint

                bad = [f"--listen {e!r}: {_validate_endpoint(e)}" for e in self["listen"]
                       if _validate_endpoint(e)]
                if bad:
                    raise ConfigError(bad)
                config = config.with_listen(self["listen"])
        except ConfigError as e:
            raise usage.UsageError("invalid configuration:\n" + "\n".join(e.problems)) from None
        for w in config.warnings:
            sys.stderr.write(f"warning: {w}\n")
        self["config_object"] = config


def makeService(options: Any) -> IService:
    config: Config = options["config_object"]
    path, listen = options["config"], list(options["listen"])

    def reload() -> Config:
        new = load(path)
        return new.with_listen(listen) if listen else new

    return _makeService(config, reload=reload, signals=True)
