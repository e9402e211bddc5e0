# -*- test-case-name: tests.test_cli -*-
"""``twistd fwproxy`` (and ``fwproxy run``): command-line options and the service they make."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from twisted.application.service import IService
from twisted.copyright import version as twisted_version
from twisted.python import usage

from fwproxy import __version__
from fwproxy.config import Config, ConfigError, load, validate_endpoint
from fwproxy.reuseport import reuseport_supported
from fwproxy.service import Foreground
from fwproxy.service import makeService as proxy_service
from fwproxy.supervisor import Supervisor


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

    def opt_version(self) -> None:
        """Display fwproxy's and Twisted's versions and exit."""
        print(f"fwproxy {__version__} (Twisted {twisted_version})")
        raise SystemExit(0)

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
                problems = ((e, validate_endpoint(e)) for e in listen)
                bad = [f"--listen {e!r}: {why}" for e, why in problems if why]
                if bad:
                    raise ConfigError(bad)
            config = load(path)
            return config.with_listen(listen) if listen else config

        return reload

    def worker_argv(self) -> list[str]:
        """These options, as a worker process (:mod:`fwproxy.worker`) takes them."""
        argv = ["--config", self["config"]] if self["config"] else []
        for endpoint in self["listen"]:
            argv += ["--listen", endpoint]
        return argv


def makeService(options: Options) -> IService:
    """The proxy as ``options`` say, with its workers; run in the foreground (``twistd -n``,
    ``fwproxy run``), a port it cannot listen on ends the process with one line."""
    from twisted.internet import reactor  # twistd's entry point: the reactor twistd installed

    workers: int = options["workers"]
    supervisor = Supervisor(reactor, workers, options.worker_argv()) if workers > 1 else None
    proxy = proxy_service(
        options["config_object"],
        reactor,
        reload=options.reloader(),
        signals=True,
        reuseport=workers > 1,
        supervisor=supervisor,
    )
    twistd = getattr(options, "parent", None)
    if twistd is not None and not twistd.get("nodaemon", True):
        return proxy  # a daemon: twistd reports a start-up error to the process that started it
    return Foreground(proxy)
