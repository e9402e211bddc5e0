"""The proxy's own cost per relayed request, without sockets: a client protocol and a pooled
upstream protocol on in-memory transports, driven through N keep-alive GETs.

    python benchmarks/microbench.py [N] [--profile | --once]

Prints microseconds of CPU per request. This is the Python-side cost (parsing, filters, header
policy, logging, framing) that the socket benchmarks in ./run add system calls to; it is far
less sensitive to a noisy machine than requests per second, so it is what the hot-path tuning
is measured with.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from twisted.internet.testing import MemoryReactorClock, StringTransport

from fwproxy.config import loads
from fwproxy.factory import ProxyFactory

CONFIG = """
[acl.clients]
src = ["127.0.0.1/32"]
[acl.tunnel_ports]
port = [443]
[acl.connect]
method = ["CONNECT"]
[access]
rules = ["deny to_linklocal", "deny connect !tunnel_ports", "allow clients", "deny all"]
[log]
access = "{log}"
"""

REQUEST = (
    b"GET http://127.0.0.1:18080/1k HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n"
    b"User-Agent: wrk\r\nAccept: */*\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 10:00:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
    b"Last-Modified: Wed, 25 Nov 2026 09:00:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "6565f0d0-400"\r\nAccept-Ranges: bytes\r\n\r\n' + b"x" * 1024
)


def run(n: int) -> float:
    log = tempfile.NamedTemporaryFile(suffix=".log", delete=False)
    reactor = MemoryReactorClock()
    factory = ProxyFactory(loads(CONFIG.format(log=log.name)), reactor)
    factory.doStart()
    proto = factory.buildProtocol(None)
    client = StringTransport(
        peerAddress=_addr("127.0.0.1", 40000), hostAddress=_addr("127.0.0.1", 3128)
    )
    proto.makeConnection(client)
    # the first request opens the upstream connection; complete it by hand
    proto.dataReceived(REQUEST)
    host, port, cfactory, timeout, bind = reactor.tcpClients[-1]
    upstream = cfactory.buildProtocol(None)
    utransport = StringTransport(peerAddress=_addr(host, port))
    upstream.makeConnection(utransport)
    upstream.dataReceived(RESPONSE)
    reactor.advance(0)
    t0 = time.process_time()
    for _ in range(n):
        proto.dataReceived(REQUEST)
        upstream.dataReceived(RESPONSE)
        if _ % 64 == 0:
            reactor.advance(0)  # flushes the access log, as a reactor turn would
            client.clear()
            utransport.clear()
    reactor.advance(0)
    t1 = time.process_time()
    assert len(reactor.tcpClients) == 1, "the upstream connection was not reused"
    factory.doStop()
    os.unlink(log.name)
    return (t1 - t0) / n * 1e6


def _addr(host: str, port: int):
    from twisted.internet.address import IPv4Address

    return IPv4Address("TCP", host, port)


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 20000
    if "--profile" in sys.argv:
        import cProfile
        import pstats

        cProfile.run("run(n)", "/tmp/microbench.prof")
        pstats.Stats("/tmp/microbench.prof").sort_stats("tottime").print_stats(25)
    elif "--once" in sys.argv:  # for benchmarks/instructions (valgrind): one pass, no timing
        run(n)
    else:
        best = min(run(n) for _ in range(3))
        print(f"{best:.1f} us of CPU per relayed request (best of 3 x {n})")
