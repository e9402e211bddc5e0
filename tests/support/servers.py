"""Loopback servers for the end-to-end tests: a recording HTTP/1.1 origin and a TCP echo server.

The servers bind to an ephemeral port (port 0) on 127.0.0.1 or [::1] and report it in ``port``.

:class:`OriginServer` speaks HTTP/1.1 with keep-alive and records every request exactly as it
arrived (:attr:`~OriginServer.requests`, including requests whose body never arrived whole,
with ``complete=False``) and every byte of every connection (:attr:`~OriginServer.raw`, capped
at 4 MiB per connection). Its own parsing is deliberately lenient, as a naive backend's would be
(bare LF ends lines; any ``Transfer-Encoding`` containing "chunked" means chunked), so that a
request the proxy lets through badly framed shows up here as an extra request.

Routes (any method):
  /bytes/N              N deterministic bytes, Content-Length
  /stream/N             N bytes streamed in 64 KiB blocks, Content-Length (no big buffer)
  /chunked/N            N deterministic bytes, chunked
  /slowbody/N[/MS]      N bytes, Content-Length, 1 KiB pieces MS ms apart (default 50)
  /reset/N              announces N bytes, sends N/2, then resets the connection (RST)
  /sleep/S              answers after S seconds
  /raw/NAME             sends the bytes registered in ``raw_responses[NAME]`` verbatim,
                        then closes if registered with close=True
  /upload               answers "<length> <sha256>" of the request body
  /slowupload/RATE      reads the body at RATE bytes/s, answers its length
  /headers              echoes the request's header lines
anything else: 200 "ok".
"""

from __future__ import annotations

import hashlib
import random
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

_PATTERNS: dict[int, bytes] = {}


def pattern(n: int) -> bytes:
    """Deterministic pseudo-random bytes of length ``n``."""
    if n not in _PATTERNS:
        _PATTERNS[n] = random.Random(n).randbytes(n)
    return _PATTERNS[n]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str = "condition", interval=0.02
):
    """Poll ``predicate`` until it returns a true value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class _Startable(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


S = TypeVar("S", bound=_Startable)


@contextmanager
def running(server: S) -> Iterator[S]:
    """Start ``server``, yield it, and stop it afterwards (for session fixtures)."""
    server.start()
    try:
        yield server
    finally:
        server.stop()


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
                        owner._record(
                            owner.record_type(line.rstrip(b"\r\n"), headers, b"", False, conn_id)
                        )
                        return
                    if h in (b"\r\n", b"\n"):
                        break
                    headers.append(h.rstrip(b"\r\n"))
                rec = owner.record_type(
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


class _TCPServer6(_TCPServer):
    address_family = socket.AF_INET6


def _server(host: str, handler: type[socketserver.BaseRequestHandler]) -> _TCPServer:
    cls = _TCPServer6 if ":" in host else _TCPServer
    return cls((host, 0), handler)


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
        """``host:port`` as it goes into a URL (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

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
    """A threaded HTTP/1.1 origin with keep-alive on an ephemeral loopback port (see the module
    docstring for what it records and serves)."""

    #: the class of the request records (a subclass may change e.g. ``names()``)
    record_type: type[Recorded] = Recorded
    #: whether /chunked and /headers answers carry a Content-Type
    content_types: bool = False

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.requests: list[Recorded] = []
        self.raw: list[bytearray] = []
        self.raw_responses: dict[str, tuple[bytes, bool]] = {}
        self._lock = threading.Lock()
        self._server = _server(host, _Handler)
        self._server.owner = self

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

    def last(self, timeout: float = 5) -> Recorded:
        """The latest request (waiting at most ``timeout`` s for one)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.requests:
                    return self.requests[-1]
            time.sleep(0.01)
        raise AssertionError("the origin received no request")

    # -- serving ----------------------------------------------------------------------------
    def serve_one(self, rec: Recorded, r: _Reader, sock: socket.socket) -> bool:
        parts = rec.request_line.split(b" ")
        if len(parts) != 3:
            rec.complete = False
            self._record(rec)
            return False
        method, target, version = parts
        path = target.decode("latin-1")
        if "://" in path:  # absolute-form reached the origin: route on its path part
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
                b"HTTP/1.1 200 OK\r\n"
                + (b"Content-Type: application/octet-stream\r\n" if self.content_types else b"")
                + b"Transfer-Encoding: chunked\r\n"
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
            hs = [("Content-Type", "text/plain")] if self.content_types else []
            hs.append(("Content-Length", str(len(body))))
            return self._send(sock, 200, hs, body, keep, head)
        return self._send(sock, 200, [("Content-Length", "2")], b"ok", keep, head)


# -- the echo server ---------------------------------------------------------------------------


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock = self.request
        sock.settimeout(self.server.idle_timeout)  # type: ignore[attr-defined]
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)  # answer a half-close with a half-close
        except OSError:
            pass


class EchoServer(_Server):
    """Raw TCP echo (a CONNECT target): echoes until EOF, then half-closes. A connection
    idle for ``idle_timeout`` seconds is dropped."""

    def __init__(self, host: str = "127.0.0.1", idle_timeout: float = 30) -> None:
        self._server = _server(host, _EchoHandler)
        self._server.idle_timeout = idle_timeout  # type: ignore[attr-defined]
