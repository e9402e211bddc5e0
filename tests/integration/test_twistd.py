"""``twistd -n fwproxy`` as an operator runs it: defaults, --listen, bad configurations,
``fwproxy check-config``, and robustness against misbehaving clients."""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import sys
import time

import pytest
from fwp_origin import pattern, sha
from fwp_support import (
    CURL,
    ERROR_MARKERS,
    REPO,
    TWISTD,
    child_env,
    endpoint,
    free_port,
    port_accepts,
    proxy_config,
    source_address_available,
    wait_until,
)

DEFAULT_PORT = 3128


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        # as Twisted's listening ports do: TIME_WAIT leftovers do not make a port busy
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return not port_accepts(host, port, 0.2)


def _http_get(address: tuple[str, int], target: str, host: str) -> tuple[int, bytes]:
    """One request with Connection: close over a raw socket: (status, body)."""
    with socket.create_connection(address, timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def _no_errors(output: str) -> None:
    bad = [line for line in output.splitlines() if ERROR_MARKERS.search(line)]
    assert not bad, "errors in the proxy's log:\n" + output


# -- start-up ------------------------------------------------------------------------------


def test_no_config_runs_embedded_default(proxy, origin, run_curl):
    if not _port_free("127.0.0.1", DEFAULT_PORT):
        pytest.skip(f"127.0.0.1:{DEFAULT_PORT} is in use")
    p = proxy.start(None, port=DEFAULT_PORT)
    assert f"listening on 127.0.0.1:{DEFAULT_PORT}" in p.output()
    status, body = _http_get(p.address, "/healthz", f"127.0.0.1:{DEFAULT_PORT}")
    assert status == 200
    assert body.strip() == b"ok"
    # the default never relays to this host itself ("deny to_localhost"), nor CONNECTs to a
    # port other than 443: only loopback destinations exist in these tests, so both are denied
    r = run_curl("-x", p.url, f"{origin.url}/bytes/2048")
    assert r.status == 403
    r = run_curl("-p", "-x", p.url, f"{origin.url}/bytes/1")
    assert r.connect_status == 403
    assert origin.snapshot() == []
    # the access log goes to standard output by default
    p_out = wait_until(
        lambda: "TCP_DENIED/403" in p.output() and p.output(), 5, what="access log lines on stdout"
    )
    assert f"GET {origin.url}/bytes/2048" in p_out
    # ...and it listens on 127.0.0.1 only
    if source_address_available("127.0.0.2"):
        assert not port_accepts("127.0.0.2", DEFAULT_PORT)


def test_listen_option_overrides_config(proxy, origin, run_curl):
    in_file = free_port()
    on_command_line = [free_port(), free_port()]
    args = []
    for port in on_command_line:
        args += ["--listen", endpoint("127.0.0.1", port)]
    proxy.start(
        proxy_config([endpoint("127.0.0.1", in_file)]),
        port=on_command_line[0],
        args=args,
    )
    wait_until(lambda: port_accepts("127.0.0.1", on_command_line[1]), 10, what="second --listen")
    for port in on_command_line:
        r = run_curl("-x", f"http://127.0.0.1:{port}", f"{origin.url}/bytes/100")
        assert r.status == 200, (port, r.stderr)
    assert not port_accepts("127.0.0.1", in_file), "the file's listen was not overridden"


# -- bad configurations --------------------------------------------------------------------

BAD_CONFIGS = {
    "wrong-type": (
        '[timeouts]\nconnect = "soon"\n',
        "timeouts.connect",
        "expected a number",
    ),
    "unknown-key": ("[limits]\nmax_header_bytes = 10\n", "limits.max_header_bytes", "unknown key"),
    "undefined-acl": (
        '[access]\nrules = ["allow nobody", "deny all"]\n',
        "access.rules",
        "nobody",
    ),
    "unknown-filter": (
        '[[filters]]\nname = "no.such.filter"\n',
        "filters",
        "no.such.filter",
    ),
    "bad-log-format": ('[log]\nformat = "xml"\n', "log.format", "xml"),
    "bad-timeout-value": ("[timeouts]\nread = -1\n", "timeouts.read", "greater than"),
}


def _run_bad(cmd: list[str], port: int, cwd) -> tuple[int, str]:
    """Run a twistd that must fail; meanwhile ``port`` must never accept. Bounded: 30 s."""
    if port_accepts("127.0.0.1", port, 0.2):
        pytest.skip(f"something else already listens on 127.0.0.1:{port}")
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=child_env(),
        cwd=str(cwd),
    )
    try:
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            assert not port_accepts("127.0.0.1", port, 0.2), "a bad configuration listened"
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
            raise AssertionError("twistd kept running on a bad configuration")
        output = proc.stdout.read().decode("utf-8", "replace")  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert not port_accepts("127.0.0.1", port, 0.2)
    return proc.returncode, output


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_exits_nonzero_naming_file_key_problem(tmp_path, case):
    body, key, problem = BAD_CONFIGS[case]
    port = free_port()
    path = tmp_path / f"{case}.toml"
    path.write_text(f'[proxy]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n\n{body}')
    rc, output = _run_bad(
        [*TWISTD, "-n", "--pidfile=", "fwproxy", "--config", str(path)], port, tmp_path
    )
    assert rc != 0, output
    lines = [line for line in output.splitlines() if str(path) in line]
    assert len(lines) == 1, f"expected one line naming {path}:\n{output}"
    assert key in lines[0] and problem in lines[0], lines[0]
    assert "Traceback" not in output, output


def test_bad_toml_syntax(tmp_path):
    port = free_port()
    path = tmp_path / "syntax.toml"
    path.write_text(f'[proxy]\nlisten = ["tcp:{port}:interface=127.0.0.1"\n')
    rc, output = _run_bad(
        [*TWISTD, "-n", "--pidfile=", "fwproxy", "--config", str(path)], port, tmp_path
    )
    assert rc != 0
    lines = [line for line in output.splitlines() if str(path) in line]
    assert len(lines) == 1 and "invalid TOML" in lines[0], output
    assert "Traceback" not in output, output


def test_missing_config_file(tmp_path):
    path = tmp_path / "does-not-exist.toml"
    rc, output = _run_bad(
        [*TWISTD, "-n", "--pidfile=", "fwproxy", "--config", str(path)], DEFAULT_PORT, tmp_path
    )
    assert rc != 0
    lines = [line for line in output.splitlines() if str(path) in line]
    assert len(lines) == 1 and "cannot read" in lines[0], output
    assert "Traceback" not in output, output


def test_bad_listen_option(tmp_path):
    port = free_port()
    path = tmp_path / "ok.toml"
    path.write_text(proxy_config([endpoint("127.0.0.1", port)]))
    cmd = [
        *TWISTD,
        "-n",
        "--pidfile=",
        "fwproxy",
        "--config",
        str(path),
        "--listen",
        "tcp:notaport",
    ]
    rc, output = _run_bad(cmd, port, tmp_path)
    assert rc != 0
    assert any("--listen" in line and "tcp:notaport" in line for line in output.splitlines()), (
        output
    )
    assert "Traceback" not in output, output


#: the two ways to run the proxy in the foreground, and how each is spelled
COMMANDS = {
    "twistd": [*TWISTD, "-n", "--pidfile=", "fwproxy"],
    "fwproxy-run": [sys.executable, "-m", "fwproxy.cli", "run"],
}


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_port_in_use_is_one_line(tmp_path, command, workers):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        path = tmp_path / "busy.toml"
        path.write_text(proxy_config([endpoint("127.0.0.1", port)]))
        proc = subprocess.run(
            [*COMMANDS[command], "--config", str(path), "--workers", workers],
            check=False,
            capture_output=True,
            env=child_env(),
            cwd=str(tmp_path),
            timeout=30,
        )
    assert proc.returncode == 1
    output = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    assert proc.stderr.decode() == (
        f"fwproxy: cannot listen on tcp:{port}:interface=127.0.0.1: address already in use\n"
    ), output
    assert "Traceback" not in output and "listening on" not in output, output


# -- fwproxy run ---------------------------------------------------------------------------


def test_fwproxy_run_takes_the_twistd_options(tmp_path, origin, run_curl):
    """``fwproxy run`` with --config, -c, --listen, -l and --workers, from another directory:
    it serves, logs on stdout, and exits 0 on SIGTERM."""
    ports = [free_port(), free_port()]
    path = tmp_path / "fw.toml"
    path.write_text(proxy_config([endpoint("127.0.0.1", free_port())]))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for args in (
        ["--config", str(path), "--listen", endpoint("127.0.0.1", ports[0]), "--workers", "1"],
        ["-c", str(path), "-l", endpoint("127.0.0.1", ports[0]), "-l", endpoint("127.0.0.1", ports[1])],
    ):  # fmt: skip
        out = tmp_path / "run.out"
        with open(out, "wb") as sink:
            proc = subprocess.Popen(
                [*COMMANDS["fwproxy-run"], *args],
                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                env=child_env(), cwd=str(elsewhere),
            )  # fmt: skip
        try:
            for port in ports[: args.count("-l") or 1]:
                wait_until(lambda p=port: port_accepts("127.0.0.1", p), 15, what="fwproxy run")
                r = run_curl("-x", f"http://127.0.0.1:{port}", f"{origin.url}/bytes/10")
                assert r.status == 200, r.stderr
            wait_until(lambda o=out: "TCP_MISS/200" in o.read_text(), 5, what="the access log")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0, out.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        _no_errors(out.read_text())
        assert not (elsewhere / "twistd.pid").exists()


# -- fwproxy check-config -------------------------------------------------------------------


def _check_config(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fwproxy.cli", "check-config", *args],
        check=False,
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=str(REPO),
        timeout=60,
    )


def test_check_config_shipped_example():
    path = str(REPO / "etc" / "fwproxy.toml")
    proc = _check_config(path)
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout, proc.stdout
    # its allow rules all name a source: not an open proxy, so --strict passes too
    strict = _check_config("--strict", path)
    assert strict.returncode == 0, strict.stderr


def test_check_config_embedded_default():
    proc = _check_config()
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout


def test_check_config_bad_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[timeouts]\nconnect = "soon"\n')
    proc = _check_config(str(path))
    assert proc.returncode == 1
    assert f"{path}:2: timeouts.connect: expected a number" in proc.stderr, proc.stderr


def test_check_config_warns_about_open_proxy(tmp_path):
    path = tmp_path / "open.toml"
    path.write_text('[acl.web]\nport = [80]\n[access]\nrules = ["allow web", "deny all"]\n')
    proc = _check_config(str(path))
    assert proc.returncode == 0
    assert "open proxy" in proc.stderr
    assert _check_config("--strict", str(path)).returncode == 1


# -- misbehaving clients --------------------------------------------------------------------


def test_bare_connect_and_close_logs_no_error(proxy, origin, run_curl):
    p = proxy.start_with()
    for i in range(20):
        s = socket.create_connection(p.address, timeout=5)
        if i % 2:  # abortive close: RST instead of FIN
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    for partial in (b"GET", b"GET http://127.0.0.1/ HTTP/1.1\r\nHo", b"\r\n"):
        with socket.create_connection(p.address, timeout=5) as s:
            s.sendall(partial)
    r = run_curl("-x", p.url, f"{origin.url}/bytes/10")
    assert r.status == 200
    p.access_line_for(f"{origin.url}/bytes/10")
    rc = p.stop()
    output = p.output()
    _no_errors(output)
    # a clean shutdown: twistd re-raises the signal it stopped on, so -SIGTERM is normal
    assert rc in (0, -signal.SIGTERM), f"twistd exited with {rc} on SIGTERM:\n{output}"
    assert "Server Shut Down." in output, output


def test_killed_client_does_not_disturb_parallel_client(proxy, origin, run_curl, tmp_path):
    p = proxy.start_with()
    env = child_env(repo=False)
    a_out = tmp_path / "a.bin"
    b_out = tmp_path / "b.bin"
    n_a, n_b = 400_000, 120_000  # 1 KiB per 50 ms (~20 s), and 1 KiB per 20 ms
    a = subprocess.Popen(
        [
            CURL,
            "-sS",
            "--max-time",
            "60",
            "-x",
            p.url,
            "-o",
            str(a_out),
            f"{origin.url}/slowbody/{n_a}/50?victim",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    b = None
    try:
        wait_until(
            lambda: a_out.exists() and a_out.stat().st_size > 0,
            15,
            what="the first client to receive data",
        )
        b = subprocess.Popen(
            [
                CURL,
                "-sS",
                "--max-time",
                "60",
                "-x",
                p.url,
                "-o",
                str(b_out),
                "-w",
                "%{http_code}",
                f"{origin.url}/slowbody/{n_b}/20?survivor",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        wait_until(
            lambda: b_out.exists() and b_out.stat().st_size > 0,
            15,
            what="the second client to receive data",
        )
        assert a.poll() is None, "the first download ended before it could be killed"
        a.send_signal(signal.SIGKILL)
        a.wait(10)
        out, err = b.communicate(timeout=90)
        assert b.returncode == 0, err
        assert out == b"200"
        got = b_out.read_bytes()
        assert len(got) == n_b and sha(got) == sha(pattern(n_b))
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
    # the proxy still serves, and recorded the killed transaction as aborted
    r = run_curl("-x", p.url, f"{origin.url}/bytes/1000")
    assert r.status == 200 and r.body == pattern(1000)
    victim = p.access_line_for("?victim", timeout=15)
    assert "_ABORTED/" in victim, victim
    survivor = p.access_line_for("?survivor")
    assert "TCP_MISS/200" in survivor, survivor
    p.stop()
    _no_errors(p.output())
