"""Download through the proxy's HTTP relay while reading slowly; report the proxy's peak RSS growth.

A proxy with flow control stays flat; one without buffers what the client cannot take yet.
usage: python3 slow_reader.py HOST:PORT PID[,PID...] URL SECONDS
HOST:PORT is the proxy (or the origin itself for the no-proxy baseline; nginx takes absolute-form).
"""

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


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    pids = [int(p) for p in sys.argv[2].split(",") if p]
    url, seconds = sys.argv[3], float(sys.argv[4])
    hostport = url.split("/")[2]
    before = peak = rss_kib(pids)
    got = 0
    try:
        s = socket.create_connection((host, int(port)), timeout=30)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(f"GET {url} HTTP/1.1\r\nHost: {hostport}\r\n\r\n".encode())
        end = time.time() + seconds
        while time.time() < end:
            d = s.recv(16384)  # at most about 1.6 MB/s
            if not d:
                print("slow_reader_note connection closed before the time was up")
                break
            got += len(d)
            time.sleep(0.01)
            peak = max(peak, rss_kib(pids))
        s.close()
    except OSError as e:
        print(f"slow_reader_error {e!r}")
        return 1
    print(f"slow_reader_read_bytes {got}")
    print(f"slow_reader_rss_before_kib {before} KiB")
    print(f"slow_reader_rss_growth_kib {peak - before} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
