"""The documented examples run: docs/examples/embedded_proxy.py, fwproxy.tac, and the acme_tagger
filter package installed with a plain ``pip install`` from a temporary directory."""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"


class _Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        _Origin.seen.append({k.lower(): v for k, v in self.headers.items()})
        body = b"hello from origin"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def origin() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(f"process exited with {proc.returncode}: {out}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


def get(proxy_port: int, url: str) -> tuple[int, dict[str, str], bytes]:
    out = subprocess.run(
        ["curl", "-s", "-i", "--max-time", "10", "-x", f"http://127.0.0.1:{proxy_port}", url],
        capture_output=True,
        check=True,
    ).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def stop(proc: subprocess.Popen[bytes]) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out.decode(errors="replace")


def env_with(*paths: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*(str(p) for p in paths), str(ROOT)])
    return env


TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def test_embedded_proxy_example(origin: int, tmp_path: Path) -> None:
    port = free_port()
    proc = run(
        [sys.executable, str(EXAMPLES / "embedded_proxy.py"), str(port)], env_with(), tmp_path
    )
    try:
        wait_port(port, proc)
        status, _, body = get(port, f"http://127.0.0.1:{origin}/x")
        assert (status, body) == (200, b"hello from origin")
    finally:
        out = stop(proc)
    # the example logs JSON lines to stdout
    assert f'"target":"http://127.0.0.1:{origin}/x"' in out
    assert "Traceback" not in out


def test_tac_example(origin: int, tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "p.toml"
    conf.write_text(
        f'[proxy]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n'
        '[acl.local]\nsrc = ["127.0.0.1/32"]\n[access]\nrules = ["allow local", "deny all"]\n'
    )
    env = env_with()
    env["FWPROXY_CONFIG"] = str(conf)
    proc = run([*TWISTD, "-n", "--pidfile=", "-y", str(EXAMPLES / "fwproxy.tac")], env, tmp_path)
    try:
        wait_port(port, proc)
        status, _, body = get(port, f"http://127.0.0.1:{origin}/tac")
        assert (status, body) == (200, b"hello from origin")
    finally:
        stop(proc)


@pytest.mark.slow
def test_acme_tagger_installed_from_a_temporary_directory(origin: int, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(EXAMPLES / "acme_tagger", src)
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    assert (site / "twisted" / "plugins" / "acme_tagger_plugin.py").exists()
    assert not (site / "twisted" / "__init__.py").exists()
    port = free_port()
    conf = tmp_path / "p.toml"
    conf.write_text(
        f'[proxy]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n'
        '[acl.local]\nsrc = ["127.0.0.1/32"]\n[access]\nrules = ["allow local", "deny all"]\n'
        '[[filters]]\nname = "acme.tagger"\n'
        'options = { tag = "blue", blocked_prefixes = ["/admin"] }\n'
    )
    env = env_with(site)
    check = subprocess.run(
        [sys.executable, "-m", "fwproxy.cli", "check-config", str(conf)],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert check.returncode == 0, check.stderr
    proc = run([*TWISTD, "-n", "--pidfile=", "fwproxy", "--config", str(conf)], env, tmp_path)
    try:
        wait_port(port, proc)
        _Origin.seen.clear()
        status, _, _ = get(port, f"http://127.0.0.1:{origin}/page")
        assert status == 200
        assert _Origin.seen[-1].get("x-acme-tag") == "blue"
        status, _, body = get(port, f"http://127.0.0.1:{origin}/admin/panel")
        assert status == 403 and b"acme.tagger" in body
    finally:
        out = stop(proc)
    assert "TCP_DENIED/403" in out


def test_acme_tagger_bad_option_is_a_config_error(tmp_path: Path) -> None:
    conf = tmp_path / "p.toml"
    conf.write_text(
        '[[filters]]\nname = "acmetagger.TaggerFactory"\noptions = { tag = "not ok!" }\n'
    )
    r = subprocess.run(
        [sys.executable, "-m", "fwproxy.cli", "check-config", str(conf)],
        env=env_with(EXAMPLES / "acme_tagger"),
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"{conf}:1: filters[0]: tag: 'not ok!' must be letters and digits"
    ]


def test_body_cap_example_refuses_or_cuts(tmp_path: Path) -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        from body_cap import BodyCapFactory
    finally:
        sys.path.remove(str(EXAMPLES))
    from fwproxy.testing import Harness, get, status_of

    with Harness(filters=[BodyCapFactory.build({"max_bytes": 10}, None)]) as h:
        client = h.connect()
        client.send(get(b"http://example.com/big"))
        upstream = h.accept()
        upstream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello")
        assert status_of(client.received()) == 502  # refused before any byte was sent
        assert upstream.closed

        client = h.connect()
        client.send(get(b"http://example.com/small"))
        upstream = h.accept()
        upstream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        assert client.received().endswith(b"Content-Length: 5\r\n\r\nhello")

        client = h.connect()
        client.send(get(b"http://example.com/stream"))  # on the kept-alive connection
        assert len(h.attempts) == 2
        upstream.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello!\r\n")
        assert status_of(client.received()) == 200
        upstream.send(b"6\r\nhello!\r\n")
        assert client.closed  # over the cap once streaming: the connection is cut
        [cut] = h.take_failures()
        assert "after the response had started" in cut.getErrorMessage()
    assert [r.status for r in h.records] == [502, 200, 200]


def test_body_cap_bad_option_is_a_config_error(tmp_path: Path) -> None:
    conf = tmp_path / "p.toml"
    conf.write_text(
        '[[filters]]\nname = "body_cap.BodyCapFactory"\noptions = { max_bytes = "lots" }\n'
    )
    r = subprocess.run(
        [sys.executable, "-m", "fwproxy.cli", "check-config", str(conf)],
        env=env_with(EXAMPLES),
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"{conf}:1: filters[0]: max_bytes: 'lots' must be a whole number of bytes"
    ]
