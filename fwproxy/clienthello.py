# -*- test-case-name: tests.test_clienthello -*-
"""A TLS ClientHello read from a client's first bytes, sans-IO: what a peeked tunnel decides on.

:class:`ClientHelloParser` is fed the bytes a client sends first, in whatever pieces they
arrive; :meth:`~ClientHelloParser.feed` answers ``None`` until the ClientHello is complete, then
the :class:`ClientHello` (server name, ALPN protocols, whether an Encrypted Client Hello
extension is present, the legacy version). Bytes that are not a TLS handshake record raise
:class:`NotTLS`; a broken or oversized hello raises :class:`MalformedHello`; both are a
:class:`HelloError`, and nothing else is ever raised. The hello may be split over several TLS
records (RFC 8446 §5.1) and across reads; GREASE values (RFC 8701) are skipped. Memory is
bounded: at most :data:`MAX_HELLO` bytes of handshake over at most :data:`MAX_RECORDS` records.
Nothing is decrypted: a ClientHello is sent in the clear.
"""

from __future__ import annotations

from dataclasses import dataclass

#: the most handshake bytes read for a ClientHello (its 4-byte header included): one TLS
#: record's worth; real hellos are 0.2-2 KiB (a post-quantum key share makes them ~1.8 KiB).
#: With the record headers, a parser holds at most ``MAX_HELLO + 5 * MAX_RECORDS`` bytes.
MAX_HELLO = 16384
#: the most TLS records a ClientHello may be split over (each at least one byte of it)
MAX_RECORDS = 32
#: the largest plaintext record (RFC 8446 §5.1: 2^14)
MAX_RECORD = 16384

HANDSHAKE = 0x16
CLIENT_HELLO = 1
EXT_SERVER_NAME = 0
EXT_ALPN = 16
#: Encrypted Client Hello (draft-ietf-tls-esni), the outer hello's extension
EXT_ECH = 0xFE0D


class HelloError(Exception):
    """The client's first bytes are not a usable ClientHello."""


class NotTLS(HelloError):
    """The first bytes are not a TLS handshake record (plain HTTP, SSH, SSLv2, ...)."""


class MalformedHello(HelloError):
    """A TLS handshake record that does not hold a valid, bounded ClientHello."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What a peek learns of a ClientHello.

    ``sni``: the ``host_name`` of the server_name extension, lower-cased, or ``None`` when the
    client sent none; ``alpn``: the ALPN protocol names offered, in order, GREASE values left
    out; ``ech``: an Encrypted Client Hello extension is present (then ``sni`` is the outer,
    public name); ``version``: the hello's ``legacy_version`` (``0x0303`` for TLS 1.2 and 1.3);
    ``extensions``: the extension types, in order, GREASE values left out.
    """

    sni: str | None
    alpn: tuple[bytes, ...] = ()
    ech: bool = False
    version: int = 0x0303
    extensions: tuple[int, ...] = ()


def is_grease(value: int) -> bool:
    """Whether a 16-bit value is one of RFC 8701's reserved GREASE values (0x0A0A ... 0xFAFA)."""
    return value & 0x0F0F == 0x0A0A and value >> 8 == value & 0xFF


class ClientHelloParser:
    """Fed a client's first bytes; see the module docstring.

    :meth:`feed` returns ``None`` (more bytes needed) or the :class:`ClientHello`, and raises a
    :class:`HelloError`. Once it has answered, further calls give the same answer. Work per call
    is proportional to the bytes given: every loop consumes a whole record.
    """

    __slots__ = ("_pending", "_handshake", "_records", "_result", "_error")

    def __init__(self) -> None:
        self._pending = bytearray()  # bytes of records not yet complete
        self._handshake = bytearray()  # the handshake bytes of the records so far
        self._records = 0
        self._result: ClientHello | None = None
        self._error: HelloError | None = None

    def feed(self, data: bytes) -> ClientHello | None:
        """Take the next bytes from the client."""
        if self._result is not None:
            return self._result
        if self._error is not None:
            raise self._error
        try:
            self._result = self._feed(data)
        except HelloError as e:
            self._error = e
            self._pending = self._handshake = bytearray()
            raise
        if self._result is not None:
            self._pending = self._handshake = bytearray()
        return self._result

    def _feed(self, data: bytes) -> ClientHello | None:
        pending = self._pending
        pending += data
        if self._records == 0 and pending:
            _first_bytes(pending)
        while len(pending) >= 5:
            kind, major, length = pending[0], pending[1], (pending[3] << 8) | pending[4]
            if kind != HANDSHAKE:
                raise MalformedHello(f"a record of type {kind} inside the ClientHello")
            if major != 3:
                raise MalformedHello(f"record version {major}.{pending[2]} is not TLS")
            if length == 0 or length > MAX_RECORD:
                raise MalformedHello(f"a handshake record of {length} bytes")
            if len(self._handshake) + length > MAX_HELLO:
                raise MalformedHello(
                    f"more than {MAX_HELLO} bytes of handshake before the hello ends"
                )
            if len(pending) < 5 + length:
                return None
            self._records += 1
            if self._records > MAX_RECORDS:
                raise MalformedHello(f"a ClientHello split over more than {MAX_RECORDS} records")
            self._handshake += pending[5 : 5 + length]
            del pending[: 5 + length]
            hello = self._complete()
            if hello is not None:
                return hello
        return None

    def _complete(self) -> ClientHello | None:
        """The hello, once the handshake bytes hold all of it."""
        hs = self._handshake
        if hs[0] != CLIENT_HELLO:
            raise MalformedHello(f"handshake message type {hs[0]} is not a ClientHello")
        if len(hs) < 4:
            return None
        length = int.from_bytes(hs[1:4], "big")
        if 4 + length > MAX_HELLO:
            raise MalformedHello(f"a ClientHello of {4 + length} bytes (at most {MAX_HELLO})")
        if len(hs) < 4 + length:
            return None
        return parse_body(bytes(hs[4 : 4 + length]))


def _first_bytes(data: bytearray) -> None:
    """Raise :class:`NotTLS` unless ``data`` starts like a TLS handshake record."""
    if data[0] != HANDSHAKE:
        raise NotTLS(f"first byte 0x{data[0]:02x} is not a TLS handshake record")
    if len(data) > 1 and data[1] != 3:
        raise NotTLS(f"record version {data[1]}.x is not TLS")


class _Reader:
    """Reads the length-prefixed fields of a hello; every overrun is a :class:`MalformedHello`."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > self.end:
            raise MalformedHello(f"the ClientHello ends inside its {what}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int, what: str) -> int:
        return int.from_bytes(self.take(n, what), "big")

    def vector(self, size: int, what: str, minimum: int = 0) -> _Reader:
        """The next vector with a ``size``-byte length, as a reader of its own."""
        length = self.uint(size, f"{what} length")
        if length < minimum:
            raise MalformedHello(f"an empty {what}")
        start = self.pos
        self.take(length, what)
        return _Reader(self.data, start, start + length)

    @property
    def left(self) -> int:
        return self.end - self.pos


def parse_body(body: bytes) -> ClientHello:
    """The :class:`ClientHello` of a ClientHello message's body (its 4-byte header removed)."""
    r = _Reader(body)
    version = r.uint(2, "version")
    if version >> 8 != 3:
        raise MalformedHello(f"ClientHello version 0x{version:04x} is not TLS")
    r.take(32, "random")
    if r.vector(1, "session id").left > 32:
        raise MalformedHello("a session id longer than 32 bytes")
    suites = r.vector(2, "cipher suites", 2)
    if suites.left % 2:
        raise MalformedHello("an odd-length cipher suite list")
    r.vector(1, "compression methods", 1)
    sni: str | None = None
    alpn: tuple[bytes, ...] = ()
    types: list[int] = []
    if r.left:  # TLS 1.2 allows a hello without extensions
        seen: set[int] = set()
        exts = r.vector(2, "extensions")
        while exts.left:
            kind = exts.uint(2, "extension type")
            data = exts.vector(2, "extension")
            if is_grease(kind):
                continue
            if kind in seen:
                raise MalformedHello(f"extension {kind} appears twice")
            seen.add(kind)
            types.append(kind)
            if kind == EXT_SERVER_NAME:
                sni = _server_name(data)
            elif kind == EXT_ALPN:
                alpn = _alpn(data)
        if r.left:
            raise MalformedHello("bytes after the extensions")
    return ClientHello(sni, alpn, EXT_ECH in types, version, tuple(types))


def _server_name(ext: _Reader) -> str:
    names = ext.vector(2, "server name list", 1)
    if ext.left:
        raise MalformedHello("bytes after the server name list")
    host: str | None = None
    while names.left:
        name_type = names.uint(1, "server name type")
        name = names.vector(2, "server name", 1)
        value = name.take(name.left, "server name")
        if name_type != 0:
            continue  # no other type is defined; RFC 6066 says to skip what is unknown
        if host is not None:
            raise MalformedHello("two host names in the server name extension")
        host = _host_name(value)
    if host is None:
        raise MalformedHello("a server name extension without a host name")
    return host


_HOST_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-._")


def _host_name(value: bytes) -> str:
    """A DNS host name (RFC 6066 §3: ASCII, no trailing dot), lower-cased."""
    lower = value.lower()
    if len(lower) > 253 or not _HOST_CHARS.issuperset(lower) or lower.endswith(b"."):
        shown = value[:64].decode("ascii", "backslashreplace")
        raise MalformedHello(f"server name {shown!r} is not a DNS host name")
    if lower.startswith(b".") or b".." in lower:
        raise MalformedHello(f"server name {lower.decode()!r} has an empty label")
    return lower.decode("ascii")


def _alpn(ext: _Reader) -> tuple[bytes, ...]:
    protocols = ext.vector(2, "ALPN list", 1)
    if ext.left:
        raise MalformedHello("bytes after the ALPN list")
    out = []
    while protocols.left:
        name = protocols.vector(1, "ALPN protocol name", 1)
        value = name.take(name.left, "ALPN protocol name")
        if not (len(value) == 2 and is_grease(int.from_bytes(value, "big"))):
            out.append(value)
    return tuple(out)
