# -*- test-case-name: tests.integration.test_twistd -*-
"""``twistd fwproxy``: command-line options and the service they make."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from fwproxy.config import Config, ConfigError, _validate_endpoint, load
from fwproxy.service import makeService as _makeService


class Options(usage.Options):
    synopsis = "[--config FILE] [--listen ENDPOINT ...] [--workers N|auto]"
    longdesc = (
        "Run fwproxy, a forward (egress) HTTP proxy. With no --config it runs on the safe "
        "embedded default: 127.0.0.1:3128, loopback clients only, CONNECT only to 443."
    )
    optParameters = [
        ["config", "c", None, "The TOML configuration file (default: the embedded default)."],
        ["workers", "w", "1", "Processes serving the same ports (tcp: listeners); auto = cores."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """An endpoint to listen on, e.g. tcp:3128 (repeatable; replaces [proxy] listen)."""
        self["listen"].append(endpoint)

    opt_l = opt_listen

    def postOptions(self) -> None:
        workers = self["workers"]
        if workers == "auto":
            workers = str(os.cpu_count() or 1)
        if not workers.isdigit() or int(workers) < 1:
            raise SystemExit(f"--workers: {self['workers']!r} is not a number or 'auto'")
        self["workers"] = int(workers)
        try:
            config = self.reloader()()
        except ConfigError as e:
            # one line per problem, not twistd's usage text: exit before anything listens
            raise SystemExit("\n".join(e.problems)) from None
        if self["workers"] > 1:
            from fwproxy.workers import reuseport_supported

            bad = [d for d in config.listen if not reuseport_supported(d)]
            if bad:
                raise SystemExit(
                    f"--workers: needs tcp: or tcp6: listeners; cannot share {', '.join(bad)}"
                )
        for w in config.warnings:
            sys.stderr.write(f"warning: {w}\n")
        self["config_object"] = config

    def reloader(self) -> Callable[[], Config]:
        """A function that reads the configuration as these options say (for SIGHUP)."""
        path, listen = self["config"], list(self["listen"])

        def reload() -> Config:
            if listen:
                bad = [
                    f"--listen {e!r}: {_validate_endpoint(e)}"
                    for e in listen
                    if _validate_endpoint(e)
                ]
                if bad:
                    raise ConfigError(bad)
            config = load(path)
            return config.with_listen(listen) if listen else config

        return reload

    def worker_argv(self) -> list[str]:
        argv = ["--config", self["config"]] if self["config"] else []
        for endpoint in self["listen"]:
            argv += ["--listen", endpoint]
        return argv


def makeService(options: Any) -> IService:
    config: Config = options["config_object"]
    supervisor = None
    if options["workers"] > 1:
        from twisted.internet import reactor

        from fwproxy.workers import Supervisor

        supervisor = Supervisor(reactor, options["workers"], options.worker_argv())
    return _makeService(
        config,
        reload=options.reloader(),
        signals=True,
        reuseport=options["workers"] > 1,
        supervisor=supervisor,
    )
