"""Open N idle CONNECT tunnels through a proxy and report the proxy's RSS growth per tunnel.

usage: python3 idle_tunnels.py [--client-hello SNI] PROXY_HOST:PORT PID[,PID...] N
                              [TARGET_HOST:PORT]

With --client-hello, each tunnel then carries a real TLS ClientHello for server name SNI (made by
Python's ssl module on a memory BIO) and is held only once the target's first TLS handshake record
(its ServerHello) came back through it: the tunnel of a client that waits mid-handshake, as a
peeked tunnel is once its ClientHello is read (benchmarks/peek). The target must speak TLS.

Prints `rss_idle_kib`, `rss_with_tunnels_kib`, `rss_per_tunnel_kib` and `tunnels_closed_by_proxy`
(tunnels the proxy had already closed when RSS was read: a non-zero count makes the per-tunnel
figure meaningless). On failure prints `idle_tunnels_error ...` and exits 1.
"""

import resource
import socket
import ssl
import sys
import time


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def is_closed(s):
    s.setblocking(False)
    try:
        while True:  # past what the target sent (the rest of its TLS flight) to a close
            if s.recv(65536) == b"":
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def client_hello(ctx, server_name):
    """The first flight of a TLS client for server_name: a real ClientHello, fresh each time."""
    out = ssl.MemoryBIO()
    tls = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname=server_name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def server_hello(s):
    """Read the target's first TLS record (its ServerHello); an error text if it is not one."""
    data = b""
    while len(data) < 5 or len(data) < 5 + int.from_bytes(data[3:5], "big"):
        d = s.recv(4096)
        if not d:
            return f"closed after {len(data)} bytes of the target's answer: {data[:16]!r}"
        data += d
    if data[0] != 0x16:  # handshake; 0x15 would be the proxy's (or the target's) alert
        return f"no TLS handshake record from the target: {data[:16]!r}"
    return ""


def main():
    args = sys.argv[1:]
    sni, ctx = None, None
    if args[:1] == ["--client-hello"]:
        sni, args = args[1], args[2:]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    host, port = args[0].rsplit(":", 1)
    pids = [int(p) for p in args[1].split(",") if p]
    n = int(args[2])
    target = args[3] if len(args) > 3 else "127.0.0.1:18080"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 100 if hard == resource.RLIM_INFINITY else min(hard, n + 100)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    before = rss_kib(pids)
    t0 = time.monotonic()
    socks = []
    try:
        for i in range(n):
            s = socket.create_connection((host, int(port)), timeout=10)
            socks.append(s)
            s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                d = s.recv(4096)
                if not d:
                    print(f"idle_tunnels_error tunnel {i}: closed by proxy; got {head[:80]!r}")
                    return 1
                head += d
            if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                print(f"idle_tunnels_error tunnel {i}: {head[:80]!r}")
                return 1
            if ctx is not None:
                s.sendall(client_hello(ctx, sni))
                err = server_hello(s)
                if err:
                    print(f"idle_tunnels_error tunnel {i}: {err}")
                    return 1
        opened = time.monotonic() - t0
        time.sleep(2)
        after = rss_kib(pids)
        closed = sum(is_closed(s) for s in socks)
        print(f"rss_idle_kib {before} KiB")
        print(f"rss_with_tunnels_kib {after} KiB")
        print(f"rss_per_tunnel_kib {(after - before) / n:.1f} KiB")
        print(f"tunnels_closed_by_proxy {closed}")
        print(f"tunnels_open_seconds {opened:.1f} s")
        return 0
    except OSError as e:
        print(f"idle_tunnels_error after {len(socks)} tunnels: {e!r}")
        return 1
    finally:
        for s in socks:
            s.close()


if __name__ == "__main__":
    sys.exit(main())
