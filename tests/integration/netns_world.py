"""The network a differential run happens in (see netns_squid_diff.py), made inside new
network and mount namespaces: client addresses (:data:`CLIENTS`) and the destination range
198.18.0.0/15 on the loopback, a private ``/etc/hosts`` (:data:`HOSTS`) and ``/etc/resolv.conf``
pointing at a name server on 127.0.0.1 (:func:`name_server`: :data:`DUAL`'s two addresses, "no
such name" for anything else, so that a name outside the hosts file fails at once for squid and
fwproxy alike), and origins answering ``200`` on :data:`PORTS` of every address.
"""

from __future__ import annotations

import os
import socket
import socketserver
import subprocess
import threading
from pathlib import Path

#: clients: the loopback, private ranges the corpus names, and the story's allowed address
CLIENTS = ("127.0.0.1", "10.1.0.5", "10.2.0.7", "192.168.3.4", "203.0.113.7")
HOSTS = {
    "www.example.com": "198.18.0.10",
    "example.com": "198.18.0.11",
    "api.internal.test": "198.18.1.20",
    "ads.tracker.test": "198.18.2.30",
    "cdn.images.test": "198.19.0.5",
    "images.test": "198.19.0.6",
}
#: a name with two addresses (from the name server: a hosts file gives squid one), one in
#: addresses.conf's blocked range, one not
DUAL = ("dual.test", ("198.18.2.29", "198.18.0.12"))
#: the destination ports the origins listen on
PORTS = (80, 443, 8080, 22)


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def setup_namespace(work: Path) -> None:
    sh("ip", "link", "set", "lo", "up")
    for address in CLIENTS[1:]:
        sh("ip", "addr", "add", f"{address}/32", "dev", "lo")
    sh("ip", "route", "add", "local", "198.18.0.0/15", "dev", "lo")
    hosts = work / "hosts"
    hosts.write_text(
        "127.0.0.1 localhost\n::1 localhost\n" + "".join(f"{a} {n}\n" for n, a in HOSTS.items())
    )
    resolv = work / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    for path, target in ((hosts, "/etc/hosts"), (resolv, "/etc/resolv.conf")):
        os.chmod(path, 0o644)
        sh("mount", "--bind", str(path), target)


class OriginHandler(socketserver.BaseRequestHandler):
    """Answers any request with 200; after a proxy's CONNECT, waits for the client to close."""

    def handle(self) -> None:
        sock = self.request
        sock.settimeout(5)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    return
                data += chunk
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        except OSError:
            pass


class Origin(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def dns_answer(query: bytes) -> bytes | None:
    """The answer to one DNS query: the two A records of :data:`DUAL` for its name (no other
    records for it), "no such name" for any other name (the names the test uses are in the
    hosts file; any other fails fast for squid and fwproxy)."""
    if len(query) < 17:
        return None
    labels, i = [], 12
    while i < len(query) and query[i]:
        labels.append(query[i + 1 : i + 1 + query[i]].decode("ascii", "replace"))
        i += 1 + query[i]
    question_end = i + 5  # the root label, QTYPE, QCLASS
    name, qtype = ".".join(labels).lower(), query[i + 1 : i + 3]
    # same id and question; QR=1, RD copied, RA=1; RCODE 0 or 3
    rd = query[2] & 0x01
    if name != DUAL[0]:
        flags = bytes((0x80 | rd, 0x83))
        return query[:2] + flags + b"\0\1\0\0\0\0\0\0" + query[12:question_end]
    records = [socket.inet_aton(a) for a in DUAL[1]] if qtype == b"\0\1" else []
    answers = b"".join(
        b"\xc0\x0c\0\1\0\1\0\0\0\x3c\0\4" + address for address in records
    )  # a pointer to the question's name, A, IN, TTL 60, 4 bytes
    flags = bytes((0x84 | rd, 0x80))  # authoritative
    counts = b"\0\1" + len(records).to_bytes(2, "big") + b"\0\0\0\0"
    return query[:2] + flags + counts + query[12:question_end] + answers


def name_server() -> socket.socket:
    """A name server on 127.0.0.1:53 answering as :func:`dns_answer` says."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 53))

    def serve() -> None:
        while True:
            try:
                query, peer = sock.recvfrom(512)
            except OSError:
                return
            answer = dns_answer(query)
            if answer is not None:
                sock.sendto(answer, peer)

    threading.Thread(target=serve, daemon=True).start()
    return sock


def start_origins() -> list[Origin]:
    origins = []
    for port in PORTS:
        server = Origin(("0.0.0.0", port), OriginHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        origins.append(server)
    return origins
