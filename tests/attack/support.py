"""Helpers for the attack and fault tests: a recording origin, a blackhole, an echo server, a
raw HTTP client and a launcher for real ``twistd -n fwproxy`` processes.

Self-contained on purpose (stdlib, plus httptools only where a strict reference parser is
wanted): nothing here imports from /work/shared or from the other test folders. Every address
is loopback and every wait is bounded.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import resource
import select
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

#: the repository root (tests/attack/ is two levels down)
REPO = Path(__file__).resolve().parents[2]

#: how the proxy is started: twistd in module form, so no console script is needed
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]

#: lines that must never appear in the proxy's own log
ERROR_MARKERS = re.compile(r"Traceback|Unhandled Error|Unhandled error|#critical\]")

FIGURES = Path("/tmp/fwproxy-figures.txt")


def record_figure(key: str, value: object) -> None:
    """Append ``key = value`` to /tmp/fwproxy-figures.txt (for the issue's notes) and print it."""
    line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {key} = {value}"
    print(line)
    with FIGURES.open("a", encoding="utf-8") as f:
        f.write(line + "\n")


# -- small utilities ---------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
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


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval=0.02):
    """Poll ``predicate`` until it returns a true value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


_PATTERNS: dict[int, bytes] = {}


def pattern(n: int) -> bytes:
    """Deterministic pseudo-random bytes of length ``n``."""
    if n not in _PATTERNS:
        _PATTERNS[n] = random.Random(n).randbytes(n)
    return _PATTERNS[n]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def raise_nofile(want: int) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit towards ``want`` (at most the hard
    limit); return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- the recording origin -----------------------------------------------------------------------


@dataclass
class Recorded:
    """One request as the origin received it: the exact request line, the raw header lines
    (without their line ends), the body, and whether the body arrived whole."""

    request_line: bytes
    header_lines: list[bytes]
    body: bytes = b""
    complete: bool = True
    conn: int = 0
    peer: tuple = ()

    @property
    def method(self) -> bytes:
        return self.request_line.split(b" ", 1)[0]

    @property
    def target(self) -> bytes:
        parts = self.request_line.split(b" ")
        return parts[1] if len(parts) > 1 else b""

    def headers(self, name: str) -> list[bytes]:
        n = name.lower().encode()
        out = []
        for line in self.header_lines:
            k, _, v = line.partition(b":")
            if k.strip().lower() == n:
                out.append(v.strip())
        return out

    def names(self) -> list[bytes]:
        return [line.partition(b":")[0].lower() for line in self.header_lines]


class _Reader:
    """Buffered reading from a socket that keeps (up to a cap) every byte received."""

    def __init__(self, sock: socket.socket, raw: bytearray, cap: int = 4 << 20) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.raw = raw
        self.cap = cap
        self.reset = False

    def _fill(self, n: int = 65536) -> bool:
        if self.reset:
            return False
        try:
            data = self.sock.recv(n)
        except ConnectionError:
            self.reset = True  # a reset is an end of stream here: keep what arrived
            return False
        if not data:
            return False
        if len(self.raw) < self.cap:
            self.raw += data[: self.cap - len(self.raw)]
        self.buf += data
        return True

    def readline(self, limit: int = 65537) -> bytes:
        """A line ending with LF (a lenient origin: bare LF ends a line too), or what is left
        at EOF."""
        while True:
            i = self.buf.find(b"\n")
            if i >= 0 or len(self.buf) >= limit:
                end = i + 1 if i >= 0 else limit
                line = bytes(self.buf[:end])
                del self.buf[:end]
                return line
            if not self._fill():
                line = bytes(self.buf)
                self.buf.clear()
                return line

    def read(self, n: int, rate: float = 0.0) -> bytes:
        """Up to ``n`` bytes (fewer at EOF); ``rate`` bytes/s slows the reading down."""
        out = bytearray()
        while len(out) < n:
            if not self.buf:
                if rate:
                    time.sleep(min(65536, n - len(out)) / rate)
                if not self._fill(min(65536, max(1, n - len(out)))):
                    break
            take = min(n - len(out), len(self.buf))
            out += self.buf[:take]
            del self.buf[:take]
        return bytes(out)


class _Abort(Exception):
    pass


class _Handler(socketserver.BaseRequestHandler):
    server: _TCPServer

    def handle(self) -> None:
        owner = self.server.owner
        sock: socket.socket = self.request
        sock.settimeout(30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn_id, raw = owner._new_connection()
        r = _Reader(sock, raw)
        try:
            while True:
                line = r.readline()
                if not line:
                    return
                if line in (b"\r\n", b"\n"):
                    continue
                headers = []
                while True:
                    h = r.readline()
                    if not h:
                        owner._record(Recorded(line.rstrip(b"\r\n"), headers, b"", False, conn_id))
                        return
                    if h in (b"\r\n", b"\n"):
                        break
                    headers.append(h.rstrip(b"\r\n"))
                rec = Recorded(
                    line.rstrip(b"\r\n"), headers, conn=conn_id, peer=self.client_address
                )
                if not owner.serve_one(rec, r, sock):
                    return
        except (OSError, _Abort, ValueError):
            return
        finally:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _TCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 1024
    owner: OriginServer


class _Server:
    _server: socketserver.TCPServer

    @property
    def host(self) -> str:
        return self._server.server_address[0]

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.authority}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class OriginServer(_Server):
    """A threaded HTTP/1.1 origin with keep-alive on an ephemeral loopback port.

    It records every request exactly as it arrived (:attr:`requests`, including requests whose
    body never arrived whole, with ``complete=False``) and every byte of every connection
    (:attr:`raw`, capped at 4 MiB per connection). Its own parsing is deliberately lenient, as a
    naive backend's would be (bare LF ends lines; any ``Transfer-Encoding`` containing "chunked"
    means chunked), so that a request the proxy lets through badly framed shows up here as an
    extra request.

    Routes (any method):
      /bytes/N              N deterministic bytes, Content-Length
      /stream/N             N bytes streamed in 64 KiB blocks, Content-Length (no big buffer)
      /chunked/N            N deterministic bytes, chunked
      /slowbody/N/MS        N bytes, Content-Length, 1 KiB pieces MS ms apart
      /reset/N              announces N bytes, sends N/2, then resets the connection (RST)
      /sleep/S              answers after S seconds
      /raw/NAME             sends the bytes registered in ``raw_responses[NAME]`` verbatim,
                            then closes if registered with close=True
      /upload               answers "<length> <sha256>" of the request body
      /slowupload/RATE      reads the body at RATE bytes/s, answers its length
      /headers              echoes the request's header lines
    anything else: 200 "ok".
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.requests: list[Recorded] = []
        self.raw: list[bytearray] = []
        self.raw_responses: dict[str, tuple[bytes, bool]] = {}
        self._lock = threading.Lock()
        self._server = _TCPServer((host, 0), _Handler)
        self._server.owner = self  # type: ignore[attr-defined]

    # -- records ----------------------------------------------------------------------------
    def _new_connection(self) -> tuple[int, bytearray]:
        raw = bytearray()
        with self._lock:
            self.raw.append(raw)
            return len(self.raw) - 1, raw

    def _record(self, rec: Recorded) -> None:
        with self._lock:
            self.requests.append(rec)

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self.raw.clear()

    def snapshot(self) -> list[Recorded]:
        with self._lock:
            return list(self.requests)

    def raw_snapshot(self) -> list[bytes]:
        with self._lock:
            return [bytes(r) for r in self.raw]

    def wait_requests(self, n: int, timeout: float = 5.0) -> list[Recorded]:
        return wait_until(
            lambda: (s := self.snapshot()) and len(s) >= n and s, timeout, f"{n} origin request(s)"
        )

    # -- serving ----------------------------------------------------------------------------
    def serve_one(self, rec: Recorded, r: _Reader, sock: socket.socket) -> bool:
        parts = rec.request_line.split(b" ")
        if len(parts) != 3:
            rec.complete = False
            self._record(rec)
            return False
        method, target, version = parts
        path = target.decode("latin-1")
        if "://" in path:
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        seg = path.split("?")[0].split("/")
        name = seg[1] if len(seg) > 1 else ""
        if rec.headers("expect") and rec.headers("expect")[0].lower() == b"100-continue":
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        rate = float(seg[2]) if name == "slowupload" and len(seg) > 2 else 0.0
        rec.complete = False  # until the whole body is in (a reset raises out of the read)
        try:
            rec.body, rec.complete = self._read_body(rec, r, rate)
        finally:
            self._record(rec)
        if not rec.complete:
            return False
        conn_tokens = b",".join(rec.headers("connection")).lower()
        keep = version == b"HTTP/1.1" and b"close" not in conn_tokens
        return self._route(method, name, seg, rec, sock, keep, method == b"HEAD")

    @staticmethod
    def _read_body(rec: Recorded, r: _Reader, rate: float) -> tuple[bytes, bool]:
        te = b",".join(rec.headers("transfer-encoding")).lower()
        if b"chunked" in te:
            out = bytearray()
            while True:
                size_line = r.readline(1 << 20)
                if not size_line.endswith(b"\n"):
                    return bytes(out), False
                try:
                    size = int(size_line.split(b";")[0].strip(), 16)
                except ValueError:
                    return bytes(out), False
                if size == 0:
                    while True:
                        t = r.readline()
                        if t in (b"\r\n", b"\n"):
                            return bytes(out), True
                        if not t:
                            return bytes(out), False
                piece = r.read(size, rate)
                out += piece
                if len(piece) < size or not r.readline(3).endswith(b"\n"):
                    return bytes(out), False
        cl = rec.headers("content-length")
        if cl:
            try:
                n = int(cl[0])
            except ValueError:
                return b"", False
            body = r.read(n, rate)
            return body, len(body) == n
        return b"", True

    @staticmethod
    def _send(
        sock, status: int, headers: list[tuple[str, str]], body: bytes, keep: bool, head: bool
    ):
        lines = [f"HTTP/1.1 {status} {'OK' if status < 300 else 'Other'}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if not keep:
            lines.append("Connection: close")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        sock.sendall(data + (b"" if head else body))
        return keep

    def _route(self, method, name, seg, rec, sock, keep, head) -> bool:
        def arg(i: int, default: str = "0") -> str:
            return seg[i] if len(seg) > i and seg[i] else default

        if name == "upload":
            body = f"{len(rec.body)} {sha(rec.body)}".encode()
            return self._send(sock, 200, [("Content-Length", str(len(body)))], body, keep, head)
        if name == "slowupload":
            body = str(len(rec.body)).encode()
            return self._send(sock, 200, [("Content-Length", str(len(body)))], body, keep, head)
        if name == "bytes":
            body = pattern(int(arg(2)))
            hs = [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))]
            return self._send(sock, 200, hs, body, keep, head)
        if name == "stream":
            n = int(arg(2))
            sock.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n".encode())
            if head:
                return keep
            block = pattern(65536)
            sent = 0
            while sent < n:
                piece = block[: min(65536, n - sent)]
                sock.sendall(piece)
                sent += len(piece)
            return keep
        if name == "chunked":
            body = pattern(int(arg(2)))
            out = [
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                + (b"" if keep else b"Connection: close\r\n")
                + b"\r\n"
            ]
            if not head:
                for i in range(0, len(body), 7777):
                    piece = body[i : i + 7777]
                    out.append(b"%x\r\n" % len(piece) + piece + b"\r\n")
                out.append(b"0\r\n\r\n")
            sock.sendall(b"".join(out))
            return keep
        if name == "slowbody":
            n = int(arg(2))
            delay = int(arg(3, "50")) / 1000
            body = pattern(n)
            sock.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n".encode())
            if head:
                return keep
            for i in range(0, n, 1024):
                sock.sendall(body[i : i + 1024])
                time.sleep(delay)
            return keep
        if name == "reset":
            n = int(arg(2))
            sock.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n".encode())
            sock.sendall(pattern(n)[: n // 2])
            time.sleep(0.2)
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            sock.close()
            raise _Abort()
        if name == "sleep":
            time.sleep(float(arg(2)))
            return self._send(sock, 200, [("Content-Length", "5")], b"slept", keep, head)
        if name == "raw":
            data, close = self.raw_responses[arg(2, "")]
            sock.sendall(data)
            return not close
        if name == "headers":
            body = b"\n".join(rec.header_lines)
            return self._send(sock, 200, [("Content-Length", str(len(body)))], body, keep, head)
        return self._send(sock, 200, [("Content-Length", "2")], b"ok", keep, head)


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock = self.request
        sock.settimeout(60)
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class EchoServer(_Server):
    """Raw TCP echo (a CONNECT target): echoes until EOF, then half-closes."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._server = _TCPServer((host, 0), _EchoHandler)


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


def _q(value: str) -> str:
    assert "'" not in value and "\n" not in value
    return f"'{value}'"


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
        f"listen = [{_q(listen)}]",
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
        f"access = {_q(str(access_log))}",
        f"format = {_q(log_format)}",
        "",
    ]
    if auth:
        lines.append("[auth]")
        for k, v in auth.items():
            lines.append(f"{k} = {_q(v) if isinstance(v, str) else v}")
        lines.append("")
    return "\n".join(lines)


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _clk_tck() -> int:
    return os.sysconf("SC_CLK_TCK")


class ProxyProcess:
    """A running ``twistd -n --pidfile= fwproxy --config FILE``."""

    def __init__(
        self,
        proc: subprocess.Popen,
        port: int,
        config_path: Path,
        output_path: Path,
        out,
        access_log: Path | None,
    ) -> None:
        self.proc = proc
        self.host = "127.0.0.1"
        self.port = port
        self.config_path = config_path
        self.output_path = output_path
        self.access_log = access_log
        self._out = out

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.output_path.read_text(encoding="utf-8", errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_listening(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"twistd exited with {self.proc.returncode} before listening:\n{self.output()}"
                )
            if port_accepts(self.host, self.port, 0.5):
                return
            time.sleep(0.05)
        raise AssertionError(f"the proxy did not listen within {timeout:g} s:\n{self.output()}")

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
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._out is not None:
            self._out.close()
            self._out = None
        return self.proc.returncode

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
        bad = [line for line in text.splitlines() if ERROR_MARKERS.search(line)]
        assert not bad, "errors in the proxy's log:\n" + text[-20000:]


class ProxyLauncher:
    """Starts proxies in ``directory``; :meth:`stop_all` stops every one (SIGTERM, then
    SIGKILL)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.running: list[ProxyProcess] = []
        self._n = 0

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
        self._n += 1
        n = self._n
        if port is None:
            port = free_port()
        if config is None:
            if access_log is None:
                access_log = self.directory / f"access{n}.log"
            config = proxy_config(port, access_log=access_log, **config_options)  # type: ignore[arg-type]
        config_path = self.directory / f"proxy{n}.toml"
        config_path.write_text(config, encoding="utf-8")
        output_path = self.directory / f"proxy{n}.out"
        out = open(output_path, "wb")  # noqa: SIM115 - closed by ProxyProcess.stop
        proc = subprocess.Popen(
            [*TWISTD, "-n", "--pidfile=", "fwproxy", "--config", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env(),
            cwd=str(self.directory),
            preexec_fn=preexec_fn,  # noqa: PLW1509 - setrlimit in the child, as asked
        )
        p = ProxyProcess(proc, port, config_path, output_path, out, access_log)
        self.running.append(p)
        if wait:
            p.wait_listening()
        return p

    def stop_all(self) -> None:
        for p in self.running:
            p.stop()
        self.running = []


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
