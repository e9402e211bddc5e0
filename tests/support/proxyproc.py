"""Real ``twistd -n fwproxy`` processes for the end-to-end tests: free ports, the child
environment, a running proxy (:class:`ProxyProcess`) and a launcher base (:class:`ProxyLauncher`)
that each suite extends with its own way of writing configurations.

Every wait here is bounded; every address is loopback.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from support.servers import wait_until

__all__ = [
    "REPO",
    "TWISTD",
    "ProxyLauncher",
    "ProxyProcess",
    "child_env",
    "free_port",
    "port_accepts",
    "toml_str",
    "wait_until",
]

#: the repository root (tests/support/ is two levels down)
REPO = Path(__file__).resolve().parents[2]

#: how twistd is started: the module form, so no console script needs to be installed
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def toml_str(value: str) -> str:
    """A TOML literal string (no escapes are processed: backslashes stay as they are)."""
    assert "'" not in value and "\n" not in value
    return f"'{value}'"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (bound to port 0 by the kernel, then released)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def child_env(extra_pythonpath: Sequence[str | Path] = (), repo: bool = True) -> dict[str, str]:
    """The environment for a child Python: PYTHONPATH has the repository root (so the
    ``twisted/plugins`` dropin and ``fwproxy`` are found without installing) and no proxy
    variables leak in."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    paths = [str(p) for p in extra_pythonpath]
    if repo:
        paths.append(str(REPO))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _clk_tck() -> int:
    return os.sysconf("SC_CLK_TCK")


@dataclass
class ProxyProcess:
    """A running ``twistd -n --pidfile= fwproxy [--config FILE]``."""

    proc: subprocess.Popen
    host: str
    port: int
    output_path: Path
    config_path: Path | None = None
    access_log: Path | None = None
    _out: object = field(default=None, repr=False)
    start_timeout: float = 10.0
    stop_timeout: float = 10.0

    #: log lines that :meth:`assert_clean_log` rejects
    error_markers = re.compile(r"Traceback|Unhandled Error|Unhandled error|#critical\]")

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def output(self) -> str:
        """Everything twistd wrote so far (its log on stdout, and stderr)."""
        return self.output_path.read_text(encoding="utf-8", errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_listening(self, timeout: float | None = None) -> None:
        timeout = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"twistd exited with {self.proc.returncode} before listening:\n" + self.output()
                )
            if port_accepts(self.host, self.port, 0.5):
                return
            time.sleep(0.05)
        raise AssertionError(
            f"the proxy did not accept on {self.host}:{self.port} within {timeout:g} s:\n"
            + self.output()
        )

    def wait_output(self, regex: str, timeout: float = 10.0, after: int = 0) -> str:
        """Wait until the proxy's log (from character ``after``) matches ``regex``."""
        pat = re.compile(regex)

        def found() -> str | None:
            m = pat.search(self.output()[after:])
            return m.group(0) if m else None

        try:
            return wait_until(found, timeout, f"{regex!r} in the proxy's log")
        except AssertionError:
            raise AssertionError(f"{regex!r} not in the proxy's log:\n{self.output()}") from None

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within ``stop_timeout``; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._out is not None:
            self._out.close()  # type: ignore[attr-defined]
            self._out = None
        return self.proc.returncode

    # -- the access log ---------------------------------------------------------------------
    def access_lines(self, count: int = 1, timeout: float = 5.0) -> list[str]:
        """The access log's lines, once it has at least ``count`` of them (bounded wait)."""
        assert self.access_log is not None, "this proxy logs to stdout"
        path = self.access_log

        def lines() -> list[str] | None:
            if not path.exists():
                return None
            text = path.read_text(encoding="utf-8", errors="replace")
            got = [line for line in text.splitlines() if line.strip()]
            return got if len(got) >= count else None

        try:
            return wait_until(lines, timeout, what=f"{count} access log line(s) in {path}")
        except AssertionError:
            text = path.read_text(errors="replace") if path.exists() else "<no file>"
            raise AssertionError(
                f"expected at least {count} access log line(s) in {path}, got:\n{text}"
            ) from None

    def access_line_for(self, needle: str, timeout: float = 5.0) -> str:
        """The one access log line containing ``needle`` (bounded wait)."""
        assert self.access_log is not None
        path = self.access_log

        def find() -> list[str] | None:
            if not path.exists():
                return None
            got = [ln for ln in path.read_text(errors="replace").splitlines() if needle in ln]
            return got or None

        try:
            found = wait_until(find, timeout, what=f"an access log line with {needle!r}")
        except AssertionError:
            text = path.read_text(errors="replace") if path.exists() else "<no file>"
            raise AssertionError(f"no access log line contains {needle!r}:\n{text}") from None
        assert len(found) == 1, f"{len(found)} access log lines contain {needle!r}: {found}"
        return found[0]

    # -- /proc ------------------------------------------------------------------------------
    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            stat = f.read()
        fields = stat.rpartition(")")[2].split()
        utime, stime = int(fields[11]), int(fields[12])
        return (utime + stime) / _clk_tck()

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def assert_clean_log(self, after: int = 0) -> None:
        text = self.output()[after:]
        bad = [line for line in text.splitlines() if self.error_markers.search(line)]
        assert not bad, "errors in the proxy's log:\n" + text[-20000:]


class ProxyLauncher:
    """Starts ``twistd -n fwproxy`` processes in ``directory``; :meth:`stop_all` stops every one
    (SIGTERM, then SIGKILL). Subclasses add a ``start`` that writes their configurations."""

    start_timeout = 10.0
    stop_timeout = 10.0

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.running: list[ProxyProcess] = []
        self._n = 0

    def _next(self) -> int:
        self._n += 1
        return self._n

    def spawn(
        self,
        n: int,
        config: str | None,
        *,
        host: str,
        port: int,
        args: Sequence[str] = (),
        access_log: Path | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        preexec_fn: Callable[[], None] | None = None,
        wait: bool = True,
    ) -> ProxyProcess:
        """Run proxy number ``n``: ``config`` (TOML text) is written to ``proxy{n}.toml``
        (``None``: no --config, the embedded default), twistd's output goes to
        ``proxy{n}.out``; ``wait`` until ``host:port`` accepts."""
        config_path = None
        cmd = [*TWISTD, "-n", "--pidfile=", "fwproxy"]
        if config is not None:
            config_path = self.directory / f"proxy{n}.toml"
            config_path.write_text(config, encoding="utf-8")
            cmd += ["--config", str(config_path)]
        cmd += list(args)
        output_path = self.directory / f"proxy{n}.out"
        out = open(output_path, "wb")  # noqa: SIM115 - closed by ProxyProcess.stop
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env() if env is None else env,
            cwd=str(cwd or self.directory),
            preexec_fn=preexec_fn,  # noqa: PLW1509 - setrlimit in the child, when asked
        )
        p = ProxyProcess(
            proc,
            host,
            port,
            output_path,
            config_path,
            access_log,
            out,
            start_timeout=self.start_timeout,
            stop_timeout=self.stop_timeout,
        )
        self.running.append(p)
        if wait:
            p.wait_listening()
        return p

    def stop_all(self) -> None:
        for p in self.running:
            p.stop()
        self.running = []
