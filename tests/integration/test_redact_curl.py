"""The ``redact`` body filter end to end: real curl through a real ``twistd -n fwproxy`` on
loopback, bodies large enough that matches straddle the proxy's reads."""

from __future__ import annotations

import gzip
import re

from fwp_origin import sha

FILTER = (
    '[[filters]]\nname = "redact"\n'
    'options = { patterns = ["SECRET-[0-9]{4}"], max_match = 64, requests = true }\n'
)
# about 2 MB of text with a match every 1001 bytes: the proxy reads 64-256 KiB at a time, so
# many matches are cut by a read boundary
BODY = b"".join(b"%s SECRET-%04d\n" % (b"x" * 989, i % 10000) for i in range(2000))
REDACTED = re.sub(rb"SECRET-[0-9]{4}", b"[REDACTED]", BODY)


def test_response_redacted_across_reads_http11(proxy, origin, run_curl):
    origin.raw_responses["secrets"] = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(BODY)
        + BODY,
        False,
    )
    p = proxy.start_with(extra=FILTER)
    r = run_curl("-x", p.url, f"{origin.url}/raw/secrets")
    assert r.returncode == 0, r.stderr
    assert r.status == 200
    assert r.body == REDACTED
    assert r.header("transfer-encoding") == ["chunked"]
    assert r.header("content-length") == []
    assert "TCP_MISS/200" in p.access_lines(1)[0]


def test_response_redacted_close_delimited_for_http10(proxy, origin, run_curl):
    origin.raw_responses["secrets10"] = (
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY,
        False,
    )
    p = proxy.start_with(extra=FILTER)
    r = run_curl("-0", "-x", p.url, f"{origin.url}/raw/secrets10")
    assert r.returncode == 0, r.stderr
    assert r.body == REDACTED
    assert r.header("content-length") == [] and r.header("transfer-encoding") == []
    assert r.header("connection") == ["close"]


def test_upload_redacted_and_rechunked(proxy, origin, run_curl, tmp_path):
    p = proxy.start_with(extra=FILTER)
    f = tmp_path / "up.txt"
    f.write_bytes(BODY)
    r = run_curl("-x", p.url, "-H", "Expect:", "--data-binary", f"@{f}", f"{origin.url}/upload")
    assert r.returncode == 0, r.stderr
    assert r.body.decode() == f"{len(REDACTED)} {sha(REDACTED)}"
    rec = origin.last()
    assert rec.headers("transfer-encoding") == [b"chunked"]
    assert rec.headers("content-length") == []


def test_compressed_bodies_cannot_slip_past(proxy, origin, run_curl, tmp_path):
    p = proxy.start_with(extra=FILTER)
    # a client asking for gzip gets an uncompressed answer the patterns see
    r = run_curl("-x", p.url, "--compressed", f"{origin.url}/bytes/10")
    assert r.returncode == 0, r.stderr
    assert origin.last().headers("accept-encoding") == [b"identity"]
    # a gzipped upload cannot be checked: refused, and never reaches the origin
    f = tmp_path / "up.gz"
    f.write_bytes(gzip.compress(BODY))
    seen = len(origin.requests)
    r = run_curl(
        "-x",
        p.url,
        "-H",
        "Expect:",
        "-H",
        "Content-Encoding: gzip",
        "--data-binary",
        f"@{f}",
        f"{origin.url}/upload",
    )
    assert r.returncode == 0, r.stderr
    assert r.status == 415
    assert len(origin.requests) == seen
