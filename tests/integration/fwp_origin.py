"""Loopback servers for the integration tests (stdlib only).

Adapted from the black-box conformance suite's origin (``pc_origin.py``), so that these tests do
not depend on that folder: the servers bind to an ephemeral port (port 0) on 127.0.0.1 or
[::1] and report it in ``port``.

:class:`OriginServer` speaks HTTP/1.1 with keep-alive and records every request it receives
exactly as it arrived (request line, raw header lines, body), so tests can assert what the
proxy forwarded.

Routes (GET/HEAD unless noted):
  /bytes/N              N deterministic bytes, Content-Length
  /chunked/N            N deterministic bytes, chunked
  /headers              echoes the request's header lines as a text/plain body
  /slowbody/N[/MS]      N bytes, Content-Length, sent in 1 KiB pieces MS ms apart (default 50)
  POST|PUT /upload      reads the body (Content-Length or chunked), answers "<length> <sha256>"
Any other path: 200 "ok".
"""

from __future__ import annotations

import hashlib
import random
import socket
import socketserver
import threading
import time
from dataclasses import dataclass

_PATTERN_CACHE: dict[int, bytes] = {}


def pattern(n: int) -> bytes:
    """Deterministic pseudo-random bytes of length n."""
    if n not in _PATTERN_CACHE:
        _PATTERN_CACHE[n] = random.Random(n).randbytes(n)
    return _PATTERN_CACHE[n]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Recorded:
    request_line: bytes
    header_lines: list[bytes]
    body: bytes = b""
    peer: tuple = ()

    @property
    def method(self) -> bytes:
        return self.request_line.split(b" ", 1)[0]

    @property
    def target(self) -> bytes:
        return self.request_line.split(b" ")[1]

    def headers(self, name: str) -> list[bytes]:
        n = name.lower().encode()
        out = []
        for line in self.header_lines:
            k, _, v = line.partition(b":")
            if k.strip().lower() == n:
                out.append(v.strip())
        return out

    def names(self) -> list[str]:
        return [line.partition(b":")[0].strip().lower().decode() for line in self.header_lines]


class _BadRequest(Exception):
    pass


class _Handler(socketserver.BaseRequestHandler):
    server: _TCPServer

    def handle(self) -> None:
        sock = self.request
        sock.settimeout(30)
        rfile = sock.makefile("rb")
        try:
            while True:
                line = rfile.readline(65537)
                if not line:
                    return
                if line in (b"\r\n", b"\n"):
                    continue
                headers = []
                while True:
                    h = rfile.readline(65537)
                    if not h:
                        return
                    if h in (b"\r\n", b"\n"):
                        break
                    headers.append(h.rstrip(b"\r\n"))
                rec = Recorded(line.rstrip(b"\r\n"), headers, peer=self.client_address)
                keep = self.server.owner.serve_one(rec, rfile, sock)
                if not keep:
                    return
        except (ConnectionError, TimeoutError, OSError, _BadRequest, ValueError):
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


class _Base:
    _server: _TCPServer

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


class OriginServer(_Base):
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._server = _server(host, _Handler)
        self._server.owner = self

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def snapshot(self) -> list[Recorded]:
        with self._lock:
            return list(self.requests)

    def last(self, timeout: float = 5) -> Recorded:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.requests:
                    return self.requests[-1]
            time.sleep(0.01)
        raise AssertionError("the origin received no request")

    # -- serving -------------------------------------------------------
    def serve_one(self, rec: Recorded, rfile, sock) -> bool:
        parts = rec.request_line.split(b" ")
        if len(parts) != 3:
            raise _BadRequest()
        method, target, version = parts
        if rec.headers("expect") and rec.headers("expect")[0].lower() == b"100-continue":
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        rec.body = self._read_body(rec, rfile)
        with self._lock:
            self.requests.append(rec)
        conn_tokens = b",".join(rec.headers("connection")).lower()
        keep = version == b"HTTP/1.1" and b"close" not in conn_tokens
        path = target.decode("latin-1")
        head = method == b"HEAD"
        return self._route(method, path, rec, sock, keep, head)

    def _read_body(self, rec: Recorded, rfile) -> bytes:
        te = b",".join(rec.headers("transfer-encoding")).lower()
        if b"chunked" in te:
            out = bytearray()
            while True:
                size_line = rfile.readline(1024)
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += rfile.read(size)
                rfile.readline(3)
        cl = rec.headers("content-length")
        if cl:
            return rfile.read(int(cl[0]))
        return b""

    @staticmethod
    def _send(
        sock, status: int, headers: list[tuple[str, str]], body: bytes, keep: bool, head: bool
    ) -> bool:
        lines = [f"HTTP/1.1 {status} {'OK' if status < 300 else 'X'}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if not keep:
            lines.append("Connection: close")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        sock.sendall(data + (b"" if head else body))
        return keep

    def _route(self, method: bytes, path: str, rec: Recorded, sock, keep: bool, head: bool) -> bool:
        if "://" in path:  # absolute-form reached the origin: route on its path part
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        seg = path.split("?")[0].split("/")
        name = seg[1] if len(seg) > 1 else ""
        if method in (b"POST", b"PUT") and name == "upload":
            body = f"{len(rec.body)} {sha(rec.body)}".encode()
            return self._send(sock, 200, [("Content-Length", str(len(body)))], body, keep, head)
        if name == "bytes":
            body = pattern(int(seg[2]))
            headers = [
                ("Content-Type", "application/octet-stream"),
                ("Content-Length", str(len(body))),
            ]
            return self._send(sock, 200, headers, body, keep, head)
        if name == "chunked":
            body = pattern(int(seg[2]))
            hdr = (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Transfer-Encoding: chunked\r\n"
                + (b"" if keep else b"Connection: close\r\n")
                + b"\r\n"
            )
            if head:
                sock.sendall(hdr)
                return keep
            out = [hdr]
            for i in range(0, len(body), 7777):
                piece = body[i : i + 7777]
                out.append(b"%x\r\n" % len(piece) + piece + b"\r\n")
            out.append(b"0\r\n\r\n")
            sock.sendall(b"".join(out))
            return keep
        if name == "headers":
            body = b"\n".join(rec.header_lines)
            headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
            return self._send(sock, 200, headers, body, keep, head)
        if name == "slowbody":
            n = int(seg[2])
            delay = int(seg[3]) / 1000 if len(seg) > 3 and seg[3] else 0.05
            body = pattern(n)
            sock.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n".encode())
            if head:
                return keep
            for i in range(0, n, 1024):
                sock.sendall(body[i : i + 1024])
                time.sleep(delay)
            return keep
        return self._send(sock, 200, [("Content-Length", "2")], b"ok", keep, head)


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock = self.request
        sock.settimeout(30)
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)  # answer a half-close with a half-close
        except OSError:
            pass


class EchoServer(_Base):
    """Raw TCP echo: a tunnel target. Echoes until EOF, then half-closes."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._server = _server(host, _EchoHandler)
