# -*- test-case-name: tests.test_testing -*-
"""Bytes on the wire for in-memory tests: request heads to send, response heads to read.

Deliberately naive: these build and take apart the simple messages a test writes by hand; they
are not a second HTTP parser to check the proxy against (:mod:`fwproxy.http1` is the parser).
"""

from __future__ import annotations

#: A complete response with a 5-byte body, as an origin would send it.
OK5 = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def get(
    url: bytes = b"http://example.com/",
    headers: bytes = b"",
    version: bytes = b"1.1",
    method: bytes = b"GET",
) -> bytes:
    """A request head (no body): ``METHOD url HTTP/version``, then ``headers`` (each field
    ending in CRLF), then the empty line."""
    return method + b" " + url + b" HTTP/" + version + b"\r\n" + headers + b"\r\n"


def split_response(data: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    """``(status_line, fields, rest)`` of the first response head in ``data``."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no complete head in {data!r}"
    lines = head.split(b"\r\n")
    fields = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields.append((name, value.strip()))
    return lines[0], fields, rest


def field(fields: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The value of the first field called ``name`` (any case), or ``None``."""
    for k, v in fields:
        if k.lower() == name.lower():
            return v
    return None


def status_of(data: bytes) -> int:
    """The status code of the first response in ``data``."""
    line = data.split(b"\r\n", 1)[0]
    assert line.startswith(b"HTTP/1."), data[:80]
    return int(line.split(b" ")[1])
