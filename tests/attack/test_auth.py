"""Proxy authentication end to end: a real proxy, an htpasswd file made by /usr/bin/htpasswd
(bcrypt ``-B`` and ``{SHA}`` ``-s`` entries), real sockets.

- no credentials: 407 with ``Proxy-Authenticate: Basic realm="<configured realm>"``, for GET
  and for CONNECT;
- valid bcrypt and {SHA} users are served; a wrong password gets 407;
- credentials never reach the origin and never appear in the access log or the proxy's log;
- the user name appears in the squid, combined and json access-log formats;
- the htpasswd file is re-read when it changes (no restart);
- a plain-text entry makes ``fwproxy check-config`` fail, naming the file and line;
- after ``max_failures`` bad attempts from one address, further attempts get 429, even with the
  right password, until ``failure_window`` has passed.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .support import (
    Conn,
    EchoServer,
    OriginServer,
    ProxyLauncher,
    ProxyProcess,
    child_env,
    fetch,
    free_port,
    proxy_config,
    wait_until,
)

HTPASSWD = shutil.which("htpasswd") or "/usr/bin/htpasswd"
REALM = "Attack Realm"

USERS = {"alice": ("bcrypt", "alice-s3cret-pw"), "bob": ("sha", "bob-s3cret-pw")}


@pytest.fixture(autouse=True)
def _htpasswd_present() -> None:
    if not os.access(HTPASSWD, os.X_OK):
        pytest.skip(f"{HTPASSWD} is missing (apt-get install apache2-utils)")


def add_user(path: Path, user: str, password: str, kind: str = "bcrypt") -> None:
    flag = {"bcrypt": ["-B", "-C", "4"], "sha": ["-s"], "plain": ["-p"]}[kind]
    create = [] if path.exists() else ["-c"]
    subprocess.run(
        [HTPASSWD, "-b", *create, *flag, str(path), user, password],
        check=True,
        capture_output=True,
        timeout=30,
    )


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def token(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def start(
    proxies: ProxyLauncher,
    tmp_path: Path,
    echo_port: int = 443,
    log_format: str = "squid",
    **auth: object,
) -> tuple[ProxyProcess, Path]:
    htpasswd = tmp_path / "users.htpasswd"
    if not htpasswd.exists():
        for user, (kind, password) in USERS.items():
            add_user(htpasswd, user, password, kind)
    port = free_port()
    access_log = tmp_path / f"access-{port}.log"
    options: dict[str, object] = {"htpasswd": str(htpasswd), "realm": REALM}
    options.update(auth)
    config = proxy_config(
        port,
        access_log=access_log,
        log_format=log_format,
        tunnel_ports=(443, echo_port),
        acls='[acl.users]\nproxy_auth = ["REQUIRED"]\n',
        rules=[
            "deny to_linklocal",
            "deny connect !tunnel_ports",
            "allow clients users",
            "deny all",
        ],
        auth=options,
    )
    return proxies.start(config, port=port, access_log=access_log), htpasswd


def get(p: ProxyProcess, origin: OriginServer, path: str = "/v/x", auth: str | None = None):
    headers = [("Proxy-Authorization", auth)] if auth else []
    return fetch(p.address, f"{origin.url}{path}", headers=headers)


def connect(p: ProxyProcess, authority: str, auth: str | None = None):
    c = Conn(p.address, timeout=10)
    extra = f"Proxy-Authorization: {auth}\r\n" if auth else ""
    c.send(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{extra}\r\n".encode())
    return c, c.response("CONNECT", timeout=10)


def test_407_challenge_names_the_configured_realm_for_get(
    proxies: ProxyLauncher, origin: OriginServer, tmp_path: Path
) -> None:
    p, _ = start(proxies, tmp_path)
    r = get(p, origin)
    assert r.status == 407, r
    assert r.header("proxy-authenticate") == [f'Basic realm="{REALM}"'.encode()], r.headers
    assert origin.snapshot() == []


def test_407_challenge_names_the_configured_realm_for_connect(
    proxies: ProxyLauncher, echo: EchoServer, tmp_path: Path
) -> None:
    p, _ = start(proxies, tmp_path, echo_port=echo.port)
    c, r = connect(p, echo.authority)
    with c:
        assert r.status == 407, r
        assert r.header("proxy-authenticate") == [f'Basic realm="{REALM}"'.encode()]


@pytest.mark.parametrize("user", list(USERS), ids=[f"{u}-{k}" for u, (k, _) in USERS.items()])
def test_valid_users_are_served(
    proxies: ProxyLauncher, origin: OriginServer, echo: EchoServer, tmp_path: Path, user: str
) -> None:
    p, _ = start(proxies, tmp_path, echo_port=echo.port)
    password = USERS[user][1]
    r = get(p, origin, auth=basic(user, password))
    assert r.status == 200 and r.body == b"ok", r
    c, r = connect(p, echo.authority, auth=basic(user, password))
    with c:
        assert r.status == 200, r
        c.send(b"ping")
        c.sock.settimeout(5)
        assert c.sock.recv(10) == b"ping"
    p.assert_clean_log()


@pytest.mark.parametrize(
    "auth",
    [
        basic("alice", "wrong"),
        basic("bob", "wrong"),
        basic("mallory", "alice-s3cret-pw"),
        basic("alice", ""),
        "Basic !!!notbase64",
        "Bearer abc",
        basic("alice", "alice-s3cret-pw").lower(),
    ],
    ids=[
        "bad-bcrypt",
        "bad-sha",
        "unknown-user",
        "empty-password",
        "bad-base64",
        "bearer",
        "mangled-token",
    ],
)
def test_bad_credentials_get_407(
    proxies: ProxyLauncher, origin: OriginServer, tmp_path: Path, auth: str
) -> None:
    p, _ = start(proxies, tmp_path, max_failures=0)
    r = get(p, origin, auth=auth)
    assert r.status == 407, r
    assert r.header("proxy-authenticate") == [f'Basic realm="{REALM}"'.encode()]
    assert origin.snapshot() == []
    p.assert_clean_log()


def test_credentials_never_reach_the_origin_nor_any_log(
    proxies: ProxyLauncher, origin: OriginServer, tmp_path: Path
) -> None:
    p, _ = start(proxies, tmp_path, max_failures=0)
    secrets = []
    for user, (_, password) in USERS.items():
        r = get(p, origin, f"/v/{user}", auth=basic(user, password))
        assert r.status == 200
        bad = get(p, origin, f"/v/{user}-bad", auth=basic(user, password + "-wrong"))
        assert bad.status == 407
        secrets += [
            password,
            token(user, password),
            password + "-wrong",
            token(user, password + "-wrong"),
        ]
    recs = origin.snapshot()
    assert [r.target for r in recs] == [b"/v/alice", b"/v/bob"]
    for rec in recs:
        assert b"proxy-authorization" not in rec.names(), rec.header_lines
        raw = b"\n".join(rec.header_lines)
        for s in secrets:
            assert s.encode() not in raw
    assert p.access_log is not None
    log = wait_until(
        lambda: (
            p.access_log.exists()
            and p.access_log.read_text().count("\n") >= 4
            and p.access_log.read_text()
        ),
        5,
        "4 access log lines",
    )
    output = p.output()
    for s in secrets:
        assert s not in log, f"a credential is in the access log: {s!r}"
        assert s not in output, f"a credential is in the proxy's log: {s!r}"
    p.assert_clean_log()


def _log_line(p: ProxyProcess, needle: str) -> str:
    assert p.access_log is not None
    return wait_until(
        lambda: (
            p.access_log.exists()
            and next((ln for ln in p.access_log.read_text().splitlines() if needle in ln), None)
        ),
        5,
        f"an access log line with {needle!r}",
    )


@pytest.mark.parametrize("fmt", ["squid", "combined", "json"])
def test_user_name_in_every_log_format(
    proxies: ProxyLauncher, origin: OriginServer, tmp_path: Path, fmt: str
) -> None:
    p, _ = start(proxies, tmp_path, log_format=fmt)
    assert get(p, origin, "/v/logged", auth=basic("alice", USERS["alice"][1])).status == 200
    assert get(p, origin, "/v/anonymous").status == 407
    line = _log_line(p, "/v/logged")
    anon = _log_line(p, "/v/anonymous")
    if fmt == "squid":
        # time elapsed client code/status bytes method URL user hierarchy type
        assert line.split()[7] == "alice", line
        assert anon.split()[7] == "-", anon
    elif fmt == "combined":
        # client ident user [time] "request" status bytes "referer" "agent"
        assert line.split()[2] == "alice", line
        assert anon.split()[2] == "-", anon
    else:
        assert json.loads(line)["user"] == "alice", line
        assert json.loads(anon)["user"] == "", anon
    p.assert_clean_log()


def test_htpasswd_file_is_reread_when_it_changes(
    proxies: ProxyLauncher, origin: OriginServer, tmp_path: Path
) -> None:
    p, htpasswd = start(proxies, tmp_path, max_failures=0)
    carol = basic("carol", "carol-pw-1")
    assert get(p, origin, auth=carol).status == 407
    before = os.stat(htpasswd).st_mtime_ns
    add_user(htpasswd, "carol", "carol-pw-1", "bcrypt")
    if os.stat(htpasswd).st_mtime_ns == before:  # same timestamp granule: make the change visible
        os.utime(htpasswd, ns=(before + 10**9, before + 10**9))
    r = get(p, origin, auth=carol)
    assert r.status == 200, f"a user added to the htpasswd file is not accepted: {r.status}"
    # and a removed user stops working (bob never logged in here: nothing cached)
    subprocess.run([HTPASSWD, "-D", str(htpasswd), "bob"], check=True, capture_output=True)
    os.utime(htpasswd, ns=(before + 2 * 10**9, before + 2 * 10**9))
    assert get(p, origin, auth=basic("bob", USERS["bob"][1])).status == 407
    assert get(p, origin, auth=basic("alice", USERS["alice"][1])).status == 200
    p.assert_clean_log()


def test_plain_text_entry_fails_check_config_naming_the_line(tmp_path: Path) -> None:
    htpasswd = tmp_path / "users.htpasswd"
    add_user(htpasswd, "alice", "alice-pw", "bcrypt")
    add_user(htpasswd, "dave", "dave-plain-pw", "plain")
    lines = htpasswd.read_text().splitlines()
    assert lines[1] == "dave:dave-plain-pw", lines
    config = tmp_path / "fwproxy.toml"
    config.write_text(
        proxy_config(
            free_port(),
            acls='[acl.users]\nproxy_auth = ["REQUIRED"]\n',
            rules=["allow clients users", "deny all"],
            auth={"htpasswd": str(htpasswd)},
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "fwproxy.cli", "check-config", str(config)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
    )
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert f"{htpasswd}:2" in proc.stderr, proc.stderr
    assert "dave" in proc.stderr
    assert "dave-plain-pw" not in proc.stderr + proc.stdout, "the password was printed"


def test_failed_attempts_are_rate_limited_per_address(
    proxies: ProxyLauncher, origin: OriginServer, tmp_path: Path
) -> None:
    p, _ = start(proxies, tmp_path, max_failures=3, failure_window=3)
    good = basic("alice", USERS["alice"][1])
    assert get(p, origin, auth=good).status == 200
    for i in range(3):
        r = get(p, origin, auth=basic("alice", f"guess-{i}"))
        assert r.status == 407, (i, r)
    t_last = time.monotonic()
    r = get(p, origin, auth=good)
    assert r.status == 429, f"right password after 3 failures: {r.status}, expected 429"
    assert get(p, origin, auth=basic("alice", "guess-4")).status == 429
    assert get(p, origin).status == 429
    wait = 3.5 - (time.monotonic() - t_last)
    if wait > 0:
        time.sleep(wait)
    r = get(p, origin, auth=good)
    assert r.status == 200, f"still {r.status} after failure_window"
    p.assert_clean_log()
