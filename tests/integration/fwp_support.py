"""Helpers for the integration tests: free ports, proxy configurations, a running ``twistd
fwproxy`` process, and real curl.

Every wait here is bounded; every address is loopback (127.0.0.1, 127.0.0.2, ::1).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: the repository root (tests/integration/ is two levels down)
REPO = Path(__file__).resolve().parents[2]

CURL = shutil.which("curl") or "/usr/bin/curl"

#: how twistd is started: the module form, so no console script needs to be installed
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

#: log lines that must never appear in the proxy's own log
ERROR_MARKERS = re.compile(r"Traceback|Unhandled Error|Unhandled error|#error\]|#critical\]")


# -- addresses ---------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (bound to port 0 by the kernel, then released)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ipv6_loopback_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
            s.listen(1)
            port = s.getsockname()[1]
            with socket.create_connection(("::1", port), timeout=2):
                pass
    except OSError:
        return False
    return True


def source_address_available(addr: str) -> bool:
    """Whether a client socket can be bound to ``addr`` (e.g. 127.0.0.2)."""
    try:
        with socket.socket() as s:
            s.bind((addr, 0))
    except OSError:
        return False
    return True


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns a true value, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# -- configuration -----------------------------------------------------------------------


def _toml_str(value: str) -> str:
    """A TOML literal string (no escapes are processed: backslashes stay as they are)."""
    assert "'" not in value and "\n" not in value
    return f"'{value}'"


def _toml_list(values: Iterable[object]) -> str:
    out = []
    for v in values:
        out.append(_toml_str(v) if isinstance(v, str) else str(v))
    return "[" + ", ".join(out) + "]"


def endpoint(host: str, port: int) -> str:
    """A Twisted server endpoint string listening on ``host``:``port``."""
    if ":" in host:
        return f"tcp6:{port}:interface={host.replace(':', chr(92) + ':')}"
    return f"tcp:{port}:interface={host}"


def proxy_config(
    listen: Sequence[str],
    *,
    clients: Sequence[str] = ("127.0.0.1/32", "::1/128"),
    tunnel_ports: Sequence[int] = (443,),
    access_log: str | Path = "-",
    log_format: str = "squid",
    filters: Sequence[Mapping[str, object]] = (),
    extra: str = "",
) -> str:
    """A TOML configuration in the spirit of etc/fwproxy.toml, for loopback tests."""
    lines = [
        "[proxy]",
        f"listen = {_toml_list(listen)}",
        "",
        "[timeouts]",
        "connect = 5",
        "request_header = 10",
        "client_idle = 30",
        "upstream_first_byte = 10",
        "read = 30",
        "tunnel_idle = 30",
        "",
        "[acl.clients]",
        f"src = {_toml_list(clients)}",
        "",
        "[acl.tunnel_ports]",
        f"port = {_toml_list(tunnel_ports)}",
        "",
        "[acl.connect]",
        'method = ["CONNECT"]',
        "",
        "[access]",
        "rules = [",
        '  "deny to_linklocal",',
        '  "deny connect !tunnel_ports",',
        '  "allow clients",',
        '  "deny all",',
        "]",
        "",
        "[headers]",
        'forwarded_for = "delete"',
        "via = false",
        "",
        "[log]",
        f"access = {_toml_str(str(access_log))}",
        f"format = {_toml_str(log_format)}",
        "",
    ]
    for f in filters:
        lines.append("[[filters]]")
        lines.append(f"name = {_toml_str(str(f['name']))}")
        lines.append("")
    if extra:
        lines.append(extra)
    return "\n".join(lines) + "\n"


# -- the proxy process -------------------------------------------------------------------


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


@dataclass
class ProxyProcess:
    """A running ``twistd -n fwproxy``."""

    proc: subprocess.Popen
    host: str
    port: int
    output_path: Path
    config_path: Path | None = None
    access_log: Path | None = None
    _out: object = field(default=None, repr=False)

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def output(self) -> str:
        """Everything twistd wrote so far (its log on stdout, and stderr)."""
        return self.output_path.read_text(encoding="utf-8", errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_listening(self, timeout: float = START_TIMEOUT) -> None:
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

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        if self._out is not None:
            self._out.close()  # type: ignore[attr-defined]
            self._out = None
        return self.proc.returncode

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


class ProxyLauncher:
    """Starts ``twistd -n fwproxy`` processes in ``directory`` and stops them all at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.running: list[ProxyProcess] = []
        self._n = 0

    def start(
        self,
        config: str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        args: Sequence[str] = (),
        extra_pythonpath: Sequence[str | Path] = (),
        access_log: Path | None = None,
        wait: bool = True,
        cwd: Path | None = None,
        repo: bool = True,
    ) -> ProxyProcess:
        """Start a proxy. ``config`` is TOML text written to a file (``None``: no --config,
        the embedded default). ``host``/``port`` is where it is expected to listen.
        ``extra_pythonpath`` goes before the repository root on PYTHONPATH; ``repo=False``
        leaves the repository out (to run an installed copy)."""
        self._n += 1
        n = self._n
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
            env=child_env(extra_pythonpath, repo=repo),
            cwd=str(cwd or self.directory),
        )
        p = ProxyProcess(proc, host, port or 0, output_path, config_path, access_log, out)
        self.running.append(p)
        if wait:
            p.wait_listening()
        return p

    def start_with(
        self,
        *,
        host: str = "127.0.0.1",
        log_format: str = "squid",
        extra_pythonpath: Sequence[str | Path] = (),
        **config_options: object,
    ) -> ProxyProcess:
        """Start a proxy on a free port of ``host`` with :func:`proxy_config`, logging
        access to a file."""
        port = free_port(host)
        access_log = self.directory / f"access-{port}.log"
        config = proxy_config(
            [endpoint(host, port)],
            access_log=access_log,
            log_format=log_format,
            **config_options,  # type: ignore[arg-type]
        )
        return self.start(
            config,
            host=host,
            port=port,
            access_log=access_log,
            extra_pythonpath=extra_pythonpath,
        )

    def stop_all(self) -> None:
        for p in self.running:
            p.stop()
        self.running = []


# -- curl ----------------------------------------------------------------------------------


@dataclass
class CurlResult:
    returncode: int
    info: dict
    body: bytes
    headers: str
    stderr: str

    @property
    def status(self) -> int:
        return int(self.info.get("http_code") or 0)

    @property
    def connect_status(self) -> int:
        """The status of the proxy's answer to CONNECT (0 when none)."""
        return int(self.info.get("http_connect") or 0)

    def header(self, name: str) -> list[str]:
        """Values of ``name`` in the final response head."""
        heads = [h for h in re.split(r"\r?\n\r?\n", self.headers) if h.strip()]
        last = heads[-1] if heads else ""
        out = []
        for line in last.splitlines()[1:]:
            k, _, v = line.partition(":")
            if k.strip().lower() == name.lower():
                out.append(v.strip())
        return out


def curl(*args: str, tmp: Path, max_time: float = 30) -> CurlResult:
    """Run real curl with ``args``; the body, headers and ``-w %{json}`` are captured."""
    tmp.mkdir(parents=True, exist_ok=True)
    body_path = tmp / f"curl-body-{time.monotonic_ns()}"
    head_path = tmp / f"curl-head-{time.monotonic_ns()}"
    cmd = [
        CURL,
        "-sS",
        "--max-time",
        str(max_time),
        "-o",
        str(body_path),
        "-D",
        str(head_path),
        "-w",
        "%{json}",
        *args,
    ]
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.pop("CURL_HOME", None)
    env["HOME"] = str(tmp)  # no ~/.curlrc
    proc = subprocess.run(cmd, check=False, capture_output=True, env=env, timeout=max_time + 15)
    try:
        info = json.loads(proc.stdout.decode("utf-8", "replace") or "{}")
    except json.JSONDecodeError:
        info = {"raw": proc.stdout.decode("utf-8", "replace")}
    body = body_path.read_bytes() if body_path.exists() else b""
    headers = head_path.read_text("latin-1") if head_path.exists() else ""
    for p in (body_path, head_path):
        if p.exists():
            p.unlink()
    return CurlResult(proc.returncode, info, body, headers, proc.stderr.decode("utf-8", "replace"))
