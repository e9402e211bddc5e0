"""Run inside a new network namespace (``unshare -n``) by tests/integration/test_ssrf_netns.py.

Puts special addresses on the namespace's own loopback — the cloud metadata service
169.254.169.254, the same through NAT64 (64:ff9b::a9fe:a9fe), 6to4, Teredo and IPv4-compatible
IPv6, and 10.0.0.1 through NAT64 — runs one origin listening on all of them, then a real
``twistd -n fwproxy`` three times: with no SSRF rule (each address is reachable through it: the
control), with ``deny to_linklocal`` and with ``deny to_nonpublic``. curl asks for each
address with GET and with CONNECT. Prints one JSON object: what curl got and what the origin saw,
per configuration. Nothing leaves the namespace: it has no interface but its loopback.

    unshare -n python netns_ssrf.py REPO_ROOT
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time

ADDRESSES = {
    "ipv4": "169.254.169.254",
    "nat64": "64:ff9b::a9fe:a9fe",
    "6to4": "2002:a9fe:a9fe::1",
    "teredo": "2001:0:4136:e378:8000:63bf:5601:5601",  # client 169.254.169.254 (inverted)
    "compatible": "::a9fe:a9fe",
    "nat64-private": "64:ff9b::a00:1",
}
ORIGIN_PORT = 8080
PROXY_PORT = 3128

RULES = {
    "control": ["allow clients", "deny all"],
    "to_linklocal": ["deny to_linklocal", "allow clients", "deny all"],
    "to_nonpublic": ["deny to_nonpublic", "allow clients", "deny all"],
}

CONFIG = """
[proxy]
listen = ["tcp:{port}:interface=127.0.0.1"]
[acl.clients]
src = ["127.0.0.1/32"]
[access]
rules = {rules}
[admin]
listen = []
[log]
access = "-"
"""


class Origin(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 too
        super().server_bind()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[str] = []

    def do_GET(self) -> None:
        Handler.seen.append(self.connection.getsockname()[0])
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def curl(what: str, *args: str) -> int:
    """curl's ``%{what}`` (``http_code``: the final status; ``http_connect``: the proxy's
    answer to CONNECT)."""
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "--max-time", "10", "-w", f"%{{{what}}}", *args],
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"},
    )
    return int(out.stdout or 0)


def run_proxy(repo: str, rules: list[str], directory: str) -> subprocess.Popen[bytes]:
    path = os.path.join(directory, "fw.toml")
    with open(path, "w") as f:
        f.write(CONFIG.format(port=PROXY_PORT, rules=json.dumps(rules)))
    env = dict(os.environ, PYTHONPATH=repo)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "-n", "--pidfile=", "fwproxy", "--config", path],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=directory,
    )  # fmt: skip
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", PROXY_PORT), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the proxy did not listen")


def main(repo: str, directory: str) -> None:
    sh("ip", "link", "set", "lo", "up")
    for address in ADDRESSES.values():
        if ":" in address:
            sh("ip", "-6", "addr", "add", f"{address}/128", "dev", "lo", "nodad")
        else:
            sh("ip", "addr", "add", f"{address}/32", "dev", "lo")
    origin = Origin(("::", ORIGIN_PORT), Handler)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    results: dict[str, dict[str, object]] = {}
    for name, rules in RULES.items():
        proxy = run_proxy(repo, rules, directory)
        try:
            Handler.seen.clear()
            got = {}
            for label, address in ADDRESSES.items():
                url = f"http://{bracket(address)}:{ORIGIN_PORT}/latest/meta-data/"
                proxy_url = f"http://127.0.0.1:{PROXY_PORT}"
                got[label] = {
                    "get": curl("http_code", "-x", proxy_url, url),
                    "connect": curl("http_connect", "-p", "-x", proxy_url, url),
                    "through_tunnel": curl("http_code", "-p", "-x", proxy_url, url),
                }
            results[name] = {"curl": got, "origin_saw": sorted(set(Handler.seen))}
        finally:
            proxy.terminate()
            proxy.wait(20)
    origin.shutdown()
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
