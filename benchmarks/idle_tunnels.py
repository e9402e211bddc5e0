"""Open N idle CONNECT tunnels through a proxy and report the proxy's RSS growth per tunnel.

usage: python3 idle_tunnels.py PROXY_HOST:PORT PID[,PID...] N [TARGET_HOST:PORT]

Prints `rss_idle_kib`, `rss_with_tunnels_kib`, `rss_per_tunnel_kib` and `tunnels_closed_by_proxy`
(tunnels the proxy had already closed when RSS was read: a non-zero count makes the per-tunnel
figure meaningless). On failure prints `idle_tunnels_error ...` and exits 1.
"""

import resource
import socket
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
        return s.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    pids = [int(p) for p in sys.argv[2].split(",") if p]
    n = int(sys.argv[3])
    target = sys.argv[4] if len(sys.argv) > 4 else "127.0.0.1:18080"
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
