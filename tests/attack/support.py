"""Helpers for the attack and fault tests: a recording origin, a blackhole, an echo server, a
raw HTTP client and a launcher for real ``twistd -n fwproxy`` processes.

Stdlib only, plus httptools only where a strict reference parser is wanted: nothing here imports
from /work/shared. The origin, the echo server and the proxy process are the ones in tests/support/
(shared with tests/integration); this module adds what only these tests need. Every address is
loopback and every wait is bounded.
"""

from __future__ import annotations

import resource
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from support import proxyproc
from support.proxyproc import (
    ProxyProcess,
    child_env,
    free_port,
    port_accepts,
    toml_str,
    wait_until,
)
from support.servers import EchoServer, OriginServer, Recorded, pattern, sha

__all__ = [
    "ERROR_MARKERS",
    "BlackholeServer",
    "Closed",
    "Conn",
    "EchoServer",
    "OriginServer",
    "ProxyLauncher",
    "ProxyProcess",
    "Recorded",
    "Response",
    "child_env",
    "fetch",
    "free_port",
    "pattern",
    "port_accepts",
    "proxy_config",
    "raise_nofile",
    "readable_now",
    "record_figure",
    "request_bytes",
    "sha",
    "wait_until",
]

#: lines that must never appear in the proxy's own log
ERROR_MARKERS = ProxyProcess.error_markers

FIGURES = Path("/tmp/fwproxy-figures.txt")


def record_figure(key: str, value: object) -> None:
    """Append ``key = value`` to /tmp/fwproxy-figures.txt (for the issue's notes) and print it."""
    line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {key} = {value}"
    print(line)
    with FIGURES.open("a", encoding="utf-8") as f:
        f.write(line + "\n")


# -- small utilities ---------------------------------------------------------------------------


def raise_nofile(want: int) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit towards ``want`` (at most the hard
    limit); return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- a blackhole -------------------------------------------------------------------------------


class BlackholeServer:
    """Accepts connections and never sends anything; counts what it accepted."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._sock = socket.socket()
        self._sock.bind((host, 0))
        self._sock.listen(128)
        self.host, self.port = self._sock.getsockname()
        self.held: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}"

    def _run(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
                self.held.append(conn)
            except OSError:
                continue

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        self._thread.join(2)
        for c in self.held:
            c.close()
        self._sock.close()


# -- a raw client -------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    complete: bool = True
    interim: list[int] = field(default_factory=list)

    def header(self, name: str) -> list[bytes]:
        n = name.lower().encode()
        return [v for k, v in self.headers if k.lower() == n]


class Closed(Exception):
    """The connection ended before a whole response head arrived."""


class Conn:
    """A client socket with buffered reads and bounded waits."""

    def __init__(self, address: tuple[str, int], timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.eof = False
        self.reset = False

    @classmethod
    def wrap(cls, sock: socket.socket) -> Conn:
        """A :class:`Conn` over an already connected socket."""
        c = cls.__new__(cls)
        c.sock = sock
        c.buf = bytearray()
        c.eof = c.reset = False
        return c

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()

    def abort(self) -> None:
        """Close with a TCP RST."""
        self.sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
        )
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            data = self.sock.recv(262144)
        except ConnectionResetError:
            self.reset = self.eof = True
            return False
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _line(self) -> bytes:
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[: i + 1])
                del self.buf[: i + 1]
                return line
            if not self._fill():
                line = bytes(self.buf)
                self.buf.clear()
                return line

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n and self._fill():
            pass
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def response(self, method: str = "GET", timeout: float = 10.0) -> Response:
        """Read one response (interim 1xx collected). Raise :class:`Closed` at EOF before a
        whole head; ``socket.timeout`` if nothing comes within ``timeout``."""
        self.sock.settimeout(timeout)
        interim = []
        while True:
            line = self._line()
            if not line.endswith(b"\n"):
                raise Closed(f"connection closed before a response head ({line[:80]!r})")
            parts = line.rstrip(b"\r\n").split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
                raise AssertionError(f"not a status line: {line[:200]!r}")
            status = int(parts[1])
            headers = []
            while True:
                h = self._line()
                if not h.endswith(b"\n"):
                    raise Closed("connection closed inside a response head")
                if h in (b"\r\n", b"\n"):
                    break
                k, _, v = h.rstrip(b"\r\n").partition(b":")
                headers.append((k.strip(), v.strip()))
            if 100 <= status < 200 and status != 101:
                interim.append(status)
                continue
            break
        resp = Response(status, parts[2] if len(parts) > 2 else b"", headers, interim=interim)
        if method == "HEAD" or status in (204, 304) or (method == "CONNECT" and status < 300):
            return resp
        te = b",".join(resp.header("transfer-encoding")).lower()
        if b"chunked" in te:
            out = bytearray()
            while True:
                size_line = self._line()
                if not size_line.endswith(b"\n"):
                    resp.complete = False
                    break
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while True:
                        t = self._line()
                        if t in (b"\r\n", b"\n"):
                            break
                        if not t:
                            resp.complete = False
                            break
                    break
                data = self._read(size)
                out += data
                if len(data) < size or not self._line().endswith(b"\n"):
                    resp.complete = False
                    break
            resp.body = bytes(out)
            return resp
        cl = resp.header("content-length")
        if cl:
            n = int(cl[0])
            resp.body = self._read(n)
            resp.complete = len(resp.body) == n
            return resp
        while self._fill():
            pass
        resp.body = bytes(self.buf)
        self.buf.clear()
        return resp

    def closed_within(self, timeout: float) -> bool:
        """Whether the peer closes (EOF or RST) within ``timeout`` s; bytes that arrive
        meanwhile are kept in ``buf``."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                self._fill()
            except TimeoutError:
                return False
        return True

    def rest(self) -> bytes:
        out = bytes(self.buf)
        self.buf.clear()
        return out


def request_bytes(
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    version: str = "HTTP/1.1",
) -> bytes:
    lines = [f"{method} {target} {version}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def fetch(
    address: tuple[str, int],
    url: str,
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    timeout: float = 10.0,
) -> Response:
    """One request with ``Connection: close`` on a fresh connection."""
    host = url.split("://", 1)[-1].split("/", 1)[0]
    hs = [("Host", host), *headers, ("Connection", "close")]
    with Conn(address, timeout) as c:
        c.send(request_bytes(method, url, hs, body))
        return c.response(method, timeout)


# -- configurations and the proxy process ----------------------------------------------------


def proxy_config(
    port: int,
    *,
    timeouts: dict[str, float] | None = None,
    limits: dict[str, int] | None = None,
    pool: dict[str, float] | None = None,
    tunnel_ports: Sequence[int] = (443,),
    rules: Sequence[str] | None = None,
    acls: str = "",
    access_log: str | Path = "-",
    log_format: str = "squid",
    auth: dict[str, object] | None = None,
    backlog: int | None = None,
) -> str:
    """A TOML configuration for a proxy on 127.0.0.1:``port`` serving loopback clients."""
    t = {
        "connect": 5,
        "request_header": 10,
        "client_idle": 30,
        "upstream_first_byte": 10,
        "read": 30,
        "tunnel_idle": 30,
        "drain": 5,
    }
    t.update(timeouts or {})
    listen = f"tcp:{port}:interface=127.0.0.1" + (f":backlog={backlog}" if backlog else "")
    if rules is None:
        rules = ["deny to_linklocal", "deny connect !tunnel_ports", "allow clients", "deny all"]
    lines = [
        "[proxy]",
        f"listen = [{toml_str(listen)}]",
        "",
        "[timeouts]",
        *(f"{k} = {v}" for k, v in t.items()),
        "",
        "[limits]",
        *(f"{k} = {v}" for k, v in (limits or {}).items()),
        "",
        "[pool]",
        *(f"{k} = {v}" for k, v in (pool or {}).items()),
        "",
        "[acl.clients]",
        'src = ["127.0.0.1/32", "::1/128"]',
        "",
        "[acl.tunnel_ports]",
        f"port = [{', '.join(str(p) for p in tunnel_ports)}]",
        "",
        "[acl.connect]",
        'method = ["CONNECT"]',
        "",
        acls,
        "",
        "[access]",
        "rules = [" + ", ".join(f'"{r}"' for r in rules) + "]",
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
    if auth:
        lines.append("[auth]")
        for k, v in auth.items():
            lines.append(f"{k} = {toml_str(v) if isinstance(v, str) else v}")
        lines.append("")
    return "\n".join(lines)


class ProxyLauncher(proxyproc.ProxyLauncher):
    """Starts proxies in ``directory``; :meth:`stop_all` stops every one (SIGTERM, then
    SIGKILL)."""

    start_timeout = 15.0
    stop_timeout = 15.0

    def start(
        self,
        config: str | None = None,
        *,
        port: int | None = None,
        access_log: Path | None = None,
        preexec_fn: Callable[[], None] | None = None,
        wait: bool = True,
        **config_options: object,
    ) -> ProxyProcess:
        """Start a proxy with ``config`` (TOML text) or one made by :func:`proxy_config`
        from ``config_options`` on a free port (logging access to a file)."""
        n = self._next()
        if port is None:
            port = free_port()
        if config is None:
            if access_log is None:
                access_log = self.directory / f"access{n}.log"
            config = proxy_config(port, access_log=access_log, **config_options)  # type: ignore[arg-type]
        return self.spawn(
            n,
            config,
            host="127.0.0.1",
            port=port,
            access_log=access_log,
            preexec_fn=preexec_fn,
            wait=wait,
        )


def readable_now(socks: Sequence[socket.socket]) -> list[socket.socket]:
    """The sockets among ``socks`` with something to read right now (data or EOF)."""
    out = []
    poller = select.poll()
    by_fd = {s.fileno(): s for s in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    for fd, _ in poller.poll(0):
        out.append(by_fd[fd])
    return out
