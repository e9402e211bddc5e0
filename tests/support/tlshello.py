"""TLS ClientHellos for the peek tests: real ones from Python's ``ssl`` (a client on memory
BIOs: nothing leaves the process), crafted ones, and ways to re-frame and extend them.

``real_hello("example.com", ["h2"])`` is the first flight OpenSSL sends for that server name;
``crafted_hello(sni=..., alpn=..., ech=True, grease=True)`` builds one field by field;
``reframe(hello, [100, 50])`` splits a hello's handshake bytes over several records;
``add_extension(hello, 0xFE0D, b"...")`` inserts an extension into a one-record hello.
"""

from __future__ import annotations

import os
import ssl
import struct
from collections.abc import Iterable, Sequence

ECH = 0xFE0D
GREASE = (0x0A0A, 0x1A1A, 0x2A2A, 0xFAFA)


def real_hello(server_hostname: str | None, alpn: Sequence[str] | None = None) -> bytes:
    """The bytes OpenSSL (through ``ssl``) sends first as a client for ``server_hostname``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def record(payload: bytes, content_type: int = 0x16, version: int = 0x0301) -> bytes:
    return struct.pack("!BHH", content_type, version, len(payload)) + payload


def handshake_of(data: bytes) -> bytes:
    """The handshake bytes of a run of records."""
    out, pos = b"", 0
    while pos < len(data):
        (length,) = struct.unpack("!H", data[pos + 3 : pos + 5])
        out += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return out


def reframe(hello: bytes, sizes: Iterable[int]) -> bytes:
    """``hello``'s handshake bytes in records of ``sizes`` bytes (the rest in a last one)."""
    hs = handshake_of(hello)
    out, pos = b"", 0
    for n in sizes:
        if pos >= len(hs):
            break
        out += record(hs[pos : pos + n])
        pos += n
    if pos < len(hs):
        out += record(hs[pos:])
    return out


def _vec(n: int, data: bytes) -> bytes:
    return len(data).to_bytes(n, "big") + data


def extension(kind: int, data: bytes) -> bytes:
    return struct.pack("!H", kind) + _vec(2, data)


def sni_extension(name: bytes) -> bytes:
    return extension(0, _vec(2, b"\x00" + _vec(2, name)))


def alpn_extension(protocols: Sequence[bytes]) -> bytes:
    return extension(16, _vec(2, b"".join(_vec(1, p) for p in protocols)))


def hello_message(
    extensions: Sequence[bytes] = (), version: int = 0x0303, with_extensions: bool = True
) -> bytes:
    """A ClientHello handshake message (with its 4-byte header) carrying ``extensions``."""
    body = (
        struct.pack("!H", version)
        + os.urandom(32)
        + _vec(1, os.urandom(32))
        + _vec(2, struct.pack("!HHH", GREASE[0], 0x1301, 0xC02F))
        + _vec(1, b"\x00")
    )
    if with_extensions:
        body += _vec(2, b"".join(extensions))
    return b"\x01" + _vec(3, body)


def crafted_hello(
    sni: str | None = None,
    alpn: Sequence[bytes] = (),
    ech: bool = False,
    grease: bool = False,
) -> bytes:
    """A one-record ClientHello with these fields (GREASE extensions and ALPN values too)."""
    exts = []
    if grease:
        exts.append(extension(GREASE[1], b""))
    if sni is not None:
        exts.append(sni_extension(sni.encode("ascii")))
    if alpn or grease:
        exts.append(alpn_extension(([GREASE[2].to_bytes(2, "big")] if grease else []) + list(alpn)))
    if ech:
        # an outer ECH extension: type 0 (outer), cipher suite, config id, enc, payload
        exts.append(
            extension(
                ECH, b"\x00\x00\x01\x00\x01\x2a" + _vec(2, os.urandom(32)) + _vec(2, os.urandom(64))
            )
        )
    if grease:
        exts.append(extension(GREASE[3], b"\x00"))
    return record(hello_message(exts))


def add_extension(hello: bytes, kind: int, data: bytes) -> bytes:
    """``hello`` (one record, one ClientHello) with one more extension at the end."""
    hs = handshake_of(hello)
    body = hs[4:]
    pos = 2 + 32
    pos += 1 + body[pos]
    pos += 2 + int.from_bytes(body[pos : pos + 2], "big")
    pos += 1 + body[pos]
    exts = body[pos + 2 :] + extension(kind, data)
    body = body[:pos] + _vec(2, exts)
    return record(b"\x01" + _vec(3, body))
