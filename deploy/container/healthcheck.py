# -*- test-case-name: tests.test_deploy -*-
"""fwproxy's container health check: ``GET /healthz`` on the proxy port; exit status 0 on
``200``, 1 otherwise, with one line saying why.

    healthcheck.py [--proxy-protocol] [HOST:PORT]

``HOST:PORT`` defaults to ``$FWPROXY_HEALTH_ADDR`` or ``127.0.0.1:3128``. ``--proxy-protocol``
(or ``FWPROXY_HEALTH_PROXY_PROTOCOL=1``) first sends a PROXY protocol v2 ``LOCAL`` header, as a
load balancer's own health check does, for a ``haproxy:`` listener, which expects one on every
connection. Only the standard library is used: the image has no curl.
"""

from __future__ import annotations

import os
import socket
import sys

#: a PROXY protocol v2 header, command LOCAL, no addresses (the receiver uses the real peer's)
PROXY_V2_LOCAL = b"\r\n\r\n\x00\r\nQUIT\n" + b"\x20\x00\x00\x00"
TIMEOUT = 3.0


def parse_args(argv: list[str]) -> tuple[str, int, bool]:
    proxy_protocol = os.environ.get("FWPROXY_HEALTH_PROXY_PROTOCOL", "") == "1"
    addr = os.environ.get("FWPROXY_HEALTH_ADDR", "127.0.0.1:3128")
    for arg in argv:
        if arg == "--proxy-protocol":
            proxy_protocol = True
        else:
            addr = arg
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"healthcheck: {addr!r} is not HOST:PORT")
    return host.strip("[]"), int(port), proxy_protocol


def check(host: str, port: int, proxy_protocol: bool) -> str | None:
    """What is wrong with the proxy at ``host:port``, or None when ``/healthz`` answers 200."""
    request = b"GET /healthz HTTP/1.1\r\nHost: fwproxy\r\nConnection: close\r\n\r\n"
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as s:
            s.sendall((PROXY_V2_LOCAL if proxy_protocol else b"") + request)
            answer = b""
            while b"\r\n" not in answer:
                chunk = s.recv(4096)
                if not chunk:
                    break
                answer += chunk
    except OSError as e:
        return f"{host}:{port}: {e.strerror or e}"
    status = answer.split(b"\r\n", 1)[0].decode("latin-1")
    if status.split(" ")[1:2] != ["200"]:
        return f"{host}:{port}: /healthz answered {status!r}"
    return None


def main(argv: list[str]) -> int:
    problem = check(*parse_args(argv))
    if problem:
        print(f"unhealthy: {problem}")
        return 1
    print("healthy")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
