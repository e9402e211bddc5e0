"""Real curl through a real ``twistd -n fwproxy`` over loopback sockets."""

from __future__ import annotations

import json
import socket

import pytest
from fwp_origin import pattern, sha
from fwp_support import endpoint, free_port, proxy_config, source_address_available

MIB = 1024 * 1024


def test_get_body_matches(proxy, origin, run_curl):
    p = proxy.start_with()
    n = 3 * MIB + 17
    r = run_curl("-x", p.url, f"{origin.url}/bytes/{n}")
    assert r.returncode == 0, r.stderr
    assert r.status == 200
    assert len(r.body) == n
    assert sha(r.body) == sha(pattern(n))
    rec = origin.last()
    assert rec.method == b"GET"
    assert rec.target == f"/bytes/{n}".encode(), "the origin must get the origin-form target"


def test_post_upload_several_mb(proxy, origin, run_curl, tmp_path):
    p = proxy.start_with()
    data = pattern(6 * MIB + 3)
    f = tmp_path / "upload.bin"
    f.write_bytes(data)
    # "Expect:" (empty) stops curl from sending Expect: 100-continue: a plain upload
    r = run_curl("-x", p.url, "-H", "Expect:", "--data-binary", f"@{f}", f"{origin.url}/upload")
    assert r.returncode == 0, r.stderr
    assert r.status == 200
    assert r.body.decode() == f"{len(data)} {sha(data)}"
    rec = origin.last()
    assert rec.method == b"POST"
    assert len(rec.body) == len(data)


def test_upload_with_expect_100_continue(proxy, origin, run_curl, tmp_path):
    """curl sends Expect: 100-continue and waits for the interim answer before the body. The
    interim 100 must reach it (from the origin, relayed, or from the proxy). curl's own
    fallback (sending anyway after --expect100-timeout) is pushed past the point where the
    test looks, so a proxy that swallows the 100 fails here instead of just being slow."""
    p = proxy.start_with()
    data = pattern(4 * MIB + 1)
    f = tmp_path / "upload.bin"
    f.write_bytes(data)
    r = run_curl(
        "-v",
        "-x",
        p.url,
        "-H",
        "Expect: 100-continue",
        "--expect100-timeout",
        "25",
        "--data-binary",
        f"@{f}",
        f"{origin.url}/upload",
        max_time=20,
    )
    assert "> Expect: 100-continue" in r.stderr, "curl did not send Expect (test broken)"
    assert r.returncode == 0, r.stderr[-2000:]
    assert "< HTTP/1.1 100" in r.stderr, "no 100 Continue reached curl"
    assert r.status == 200
    assert r.body.decode() == f"{len(data)} {sha(data)}"


def test_connect_tunnel_with_curl_p(proxy, origin, run_curl):
    """``curl -p`` tunnels plain HTTP through CONNECT: the origin sees an origin-form request on
    a connection that the proxy opened for the tunnel."""
    p = proxy.start_with(tunnel_ports=(443, origin.port))
    n = 1 * MIB + 5
    r = run_curl("-v", "-p", "-x", p.url, f"{origin.url}/bytes/{n}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"> CONNECT {origin.authority}" in r.stderr
    assert r.connect_status == 200
    assert r.status == 200
    assert sha(r.body) == sha(pattern(n))
    rec = origin.last()
    assert rec.target == f"/bytes/{n}".encode()
    # the request inside the tunnel is curl's own, untouched by the proxy's header filters
    assert rec.headers("host") == [origin.authority.encode()]
    line = p.access_line_for(f"CONNECT {origin.authority}")
    assert "TCP_TUNNEL/200" in line, line


def test_connect_tunnel_to_echo_server(proxy, echo):
    """A raw CONNECT to the TCP echo server: bytes go both ways, EOF is passed on."""
    p = proxy.start_with(tunnel_ports=(echo.port,))
    with socket.create_connection(p.address, timeout=10) as s:
        s.sendall(f"CONNECT {echo.authority} HTTP/1.1\r\nHost: {echo.authority}\r\n\r\n".encode())
        f = s.makefile("rb")
        status_line = f.readline()
        assert status_line.split(b" ")[1] == b"200", status_line
        while f.readline() not in (b"\r\n", b"\n", b""):
            pass
        payload = pattern(200_000)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = f.read()  # until the echo's half-close comes back through the tunnel
    assert sha(got) == sha(payload)


def test_chunked_response(proxy, origin, run_curl):
    p = proxy.start_with()
    n = 500_001
    r = run_curl("-x", p.url, f"{origin.url}/chunked/{n}")
    assert r.returncode == 0, r.stderr
    assert r.status == 200
    assert len(r.body) == n
    assert sha(r.body) == sha(pattern(n))


def test_head(proxy, origin, run_curl):
    p = proxy.start_with()
    r = run_curl("-I", "-x", p.url, f"{origin.url}/bytes/5000", max_time=15)
    assert r.returncode == 0, r.stderr
    assert r.status == 200
    assert r.header("content-length") == ["5000"]
    assert r.info.get("size_download") == 0
    assert origin.last().method == b"HEAD"


def test_head_then_get_on_one_connection(proxy, origin, run_curl):
    """After a HEAD the proxy must not wait for a body: the next request on the same client
    connection is answered."""
    p = proxy.start_with()
    with socket.create_connection(p.address, timeout=10) as s:
        f = s.makefile("rb")
        for method in ("HEAD", "GET"):
            s.sendall(
                f"{method} {origin.url}/bytes/300 HTTP/1.1\r\nHost: {origin.authority}\r\n\r\n".encode()
            )
            status = f.readline()
            assert status.split(b" ")[1] == b"200", status
            length = None
            while (h := f.readline()) not in (b"\r\n", b"\n", b""):
                k, _, v = h.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v)
            assert length == 300
            if method == "GET":
                assert f.read(300) == pattern(300)


def test_ipv6_listener_and_origin(proxy, origin6, run_curl):
    p = proxy.start_with(host="::1")
    n = 100_000
    r = run_curl("-x", p.url, f"{origin6.url}/bytes/{n}")
    assert r.returncode == 0, r.stderr
    assert r.status == 200
    assert sha(r.body) == sha(pattern(n))
    assert origin6.last().target == f"/bytes/{n}".encode()
    line = p.access_line_for(f"/bytes/{n}")
    assert " ::1 " in line and "TCP_MISS/200" in line, line


def test_ipv6_listener_via_command_line(proxy, origin6, run_curl):
    """``--listen tcp6:PORT:interface=\\:\\:1`` on the command line overrides the file."""
    port = free_port("::1")
    # the file says 127.0.0.1 on some other port: the command line wins
    file_config = proxy_config([endpoint("127.0.0.1", free_port())])
    p = proxy.start(
        file_config,
        host="::1",
        port=port,
        args=["--listen", f"tcp6:{port}:interface=\\:\\:1"],
    )
    r = run_curl("-x", p.url, f"{origin6.url}/bytes/1000")
    assert r.returncode == 0, r.stderr
    assert r.status == 200
    assert r.body == pattern(1000)


def test_acl_denies_client_from_127_0_0_2(proxy, origin, run_curl):
    if not source_address_available("127.0.0.2"):
        pytest.skip("cannot bind a client socket to 127.0.0.2")
    p = proxy.start_with(clients=("127.0.0.1/32",))
    r = run_curl("--interface", "127.0.0.2", "-x", p.url, f"{origin.url}/bytes/10")
    assert r.returncode == 0, r.stderr
    assert r.status == 403
    assert origin.snapshot() == [], "a denied request reached the origin"
    line = p.access_line_for(f"{origin.url}/bytes/10")
    assert line.split()[2] == "127.0.0.2", line
    assert "TCP_DENIED/403" in line, line
    # and the allowed address is still served
    r = run_curl("-x", p.url, f"{origin.url}/bytes/10")
    assert r.status == 200


def test_connect_to_port_not_allowed_is_403(proxy, origin, echo, run_curl):
    p = proxy.start_with(tunnel_ports=(443,))
    r = run_curl("-p", "-x", p.url, f"{origin.url}/bytes/10")
    assert r.connect_status == 403, (r.info, r.stderr)
    assert r.returncode != 0  # curl reports the failed tunnel
    assert origin.snapshot() == []
    with socket.create_connection(p.address, timeout=10) as s:
        s.sendall(f"CONNECT {echo.authority} HTTP/1.1\r\nHost: {echo.authority}\r\n\r\n".encode())
        status = s.makefile("rb").readline()
    assert status.split(b" ")[1] == b"403", status
    line = p.access_line_for(f"CONNECT {echo.authority}")
    assert "TCP_DENIED/403" in line, line


def test_upstream_refused_is_502(proxy, run_curl):
    p = proxy.start_with()
    closed = free_port()  # nobody listens there
    r = run_curl("-x", p.url, f"http://127.0.0.1:{closed}/")
    assert r.returncode == 0, r.stderr
    assert r.status == 502
    assert r.body, "a 502 should say what failed"
    line = p.access_line_for(f"http://127.0.0.1:{closed}/")
    assert "/502 " in line, line


def dechunk(raw: bytes) -> bytes:
    out, rest = bytearray(), raw
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += rest[:size]
        assert rest[size : size + 2] == b"\r\n", "bad chunk framing"
        rest = rest[size + 2 :]


def _sent_bytes(r) -> int:
    """Bytes the proxy sent to curl for this response: the head and the body as received
    (for a chunked response fetched with --raw, the body includes the chunk framing)."""
    return int(r.info["size_header"]) + len(r.body)


def test_access_log_squid_format(proxy, origin, run_curl):
    p = proxy.start_with(log_format="squid")
    n = 12_345
    url = f"{origin.url}/bytes/{n}?squid"
    r = run_curl("-x", p.url, url)
    assert r.status == 200
    closed = free_port()
    bad = run_curl("-x", p.url, f"http://127.0.0.1:{closed}/refused")
    assert bad.status == 502
    post = run_curl("-x", p.url, "-H", "Expect:", "--data-binary", "hello", f"{origin.url}/upload")
    assert post.status == 200

    lines = p.access_lines(3)
    assert len(lines) == 3, lines  # one line per transaction, nothing else
    # time elapsed client code/status bytes method URL user hierarchy/peer type
    f = p.access_line_for(url).split()
    assert len(f) == 10, f
    float(f[0])
    int(f[1])
    assert f[2] == "127.0.0.1"
    assert f[3] == "TCP_MISS/200"
    assert int(f[4]) == _sent_bytes(r), (f, r.info)
    assert f[5] == "GET"
    assert f[6] == url
    assert f[7] == "-"
    assert f[8] == f"HIER_DIRECT/{origin.host}"
    assert f[9] == "application/octet-stream"

    f = p.access_line_for("/refused").split()
    assert f[3].endswith("/502"), f
    assert int(f[4]) == _sent_bytes(bad), (f, bad.info)

    f = p.access_line_for("/upload").split()
    assert f[3] == "TCP_MISS/200" and f[5] == "POST", f
    assert int(f[4]) == _sent_bytes(post)


def test_access_log_json_format(proxy, origin, run_curl):
    if not source_address_available("127.0.0.2"):
        pytest.skip("cannot bind a client socket to 127.0.0.2")
    p = proxy.start_with(log_format="json", clients=("127.0.0.1/32",))
    n = 54_321
    url = f"{origin.url}/chunked/{n}?json"
    # --raw: curl keeps the chunked framing, so size_download counts every byte sent
    r = run_curl("--raw", "-x", p.url, "-A", "itest-agent", url)
    assert r.status == 200
    assert dechunk(r.body) == pattern(n)
    denied = run_curl("--interface", "127.0.0.2", "-x", p.url, f"{origin.url}/denied")
    assert denied.status == 403
    lines = p.access_lines(2)
    assert len(lines) == 2, lines
    records = [json.loads(line) for line in lines]
    by_target = {rec["target"]: rec for rec in records}

    ok = by_target[url]
    assert ok["method"] == "GET"
    assert ok["status"] == 200
    assert ok["result"] == "TCP_MISS"
    assert ok["client"] == "127.0.0.1"
    assert ok["bytes_out"] == _sent_bytes(r), (ok, r.info)
    assert ok["bytes_in"] > 0
    assert ok["upstream"] == origin.authority
    assert ok["user_agent"] == "itest-agent"

    no = by_target[f"{origin.url}/denied"]
    assert no["status"] == 403
    assert no["result"] == "TCP_DENIED"
    assert no["client"] == "127.0.0.2"
    assert no["upstream"] == ""
    assert no["bytes_out"] == _sent_bytes(denied)


def test_no_x_forwarded_for_reaches_origin(proxy, origin, run_curl):
    p = proxy.start_with()
    r = run_curl(
        "-x",
        p.url,
        "-H",
        "X-Forwarded-For: 203.0.113.9",
        "-H",
        "X-Itest: kept",
        f"{origin.url}/headers",
    )
    assert r.status == 200
    rec = origin.last()
    names = rec.names()
    assert "x-forwarded-for" not in names, rec.header_lines
    assert "forwarded" not in names, rec.header_lines
    assert rec.headers("x-itest") == [b"kept"], "the proxy dropped an ordinary header"
    assert b"x-forwarded-for" not in r.body.lower()
    # and none is added when the client sends none
    run_curl("-x", p.url, f"{origin.url}/headers?2")
    assert "x-forwarded-for" not in origin.last().names()
