"""Helpers for the integration tests: free ports, proxy configurations, a running ``twistd
fwproxy`` process, and real curl.

Every wait here is bounded; every address is loopback (127.0.0.1, 127.0.0.2, ::1).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from support import proxyproc
from support.proxyproc import (
    REPO,
    TWISTD,
    ProxyProcess,
    child_env,
    free_port,
    port_accepts,
    toml_str,
    wait_until,
)

__all__ = [
    "CURL",
    "ERROR_MARKERS",
    "REPO",
    "TWISTD",
    "CurlResult",
    "ProxyLauncher",
    "ProxyProcess",
    "child_env",
    "curl",
    "endpoint",
    "free_port",
    "ipv6_loopback_available",
    "port_accepts",
    "proxy_config",
    "source_address_available",
    "wait_until",
]

CURL = shutil.which("curl") or "/usr/bin/curl"

#: log lines that must never appear in the proxy's own log
ERROR_MARKERS = re.compile(r"Traceback|Unhandled Error|Unhandled error|#error\]|#critical\]")


# -- addresses ---------------------------------------------------------------------------


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


# -- configuration -----------------------------------------------------------------------


def _toml_list(values: Iterable[object]) -> str:
    out = []
    for v in values:
        out.append(toml_str(v) if isinstance(v, str) else str(v))
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
        f"access = {toml_str(str(access_log))}",
        f"format = {toml_str(log_format)}",
        "",
    ]
    for f in filters:
        lines.append("[[filters]]")
        lines.append(f"name = {toml_str(str(f['name']))}")
        lines.append("")
    if extra:
        lines.append(extra)
    return "\n".join(lines) + "\n"


# -- the proxy process -------------------------------------------------------------------


class ProxyLauncher(proxyproc.ProxyLauncher):
    """Starts ``twistd -n fwproxy`` processes in ``directory`` and stops them all at the end."""

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
        return self.spawn(
            self._next(),
            config,
            host=host,
            port=port or 0,
            args=args,
            access_log=access_log,
            env=child_env(extra_pythonpath, repo=repo),
            cwd=cwd,
            wait=wait,
        )

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
