"""Request smuggling and malformed messages, against a real proxy and a recording origin.

Every request vector is sent on one connection with a second, innocent-looking request hidden
after it or inside its body: ``GET http://ORIGIN/smuggled HTTP/1.1``. Whatever the proxy does, the
origin must never receive a request whose target contains ``/smuggled``. Beyond that each vector
states what a correct proxy does (the ``why`` of each vector gives the reasoning and the source):

- ``REJECT``: answer 4xx/5xx (one of ``statuses``), close the connection, and let no complete
  request reach the origin (a request whose head was already streamed may arrive cut short);
- ``ONE``: forward exactly one request, with exactly ``body`` as its body, answer the origin's
  response and nothing else;
- ``EITHER``: RFC 9110/9112 allow both (e.g. "MAY reject, or MAY replace with SP"); whichever
  the proxy does must be done as above.

Whatever is forwarded must be cleanly framed: the origin's raw byte stream is re-parsed with a
strict parser (llhttp via httptools), must parse without error, and has no request head with
``/smuggled`` in it; a forwarded head carries at most one Content-Length, never both
Content-Length and Transfer-Encoding, and no bare CR or NUL.

Sources: RFC 9112 §2.2 (line endings), §3 (request line), §5 (fields), §6 (message body length),
§7.1 (chunked); RFC 9110 §5.5 (field values), §5.6.1 (lists), §8.6 (Content-Length); Linhart
et al., "HTTP Request Smuggling" (Watchfire, 2005); Kettle, "HTTP Desync Attacks: Request
Smuggling Reborn" (PortSwigger, 2019); Kettle, "HTTP/1.1 must die: the desync endgame"
(PortSwigger, 2025); Kallus et al., "Funky chunks" (chunk-extension and line-terminator
discrepancies, 2025); Bishop Fox, "h2c smuggling" (2020).

The corpus also covers the upstream direction: responses with conflicting framing get 502, a
body broken after the head was relayed ends the client's response visibly cut, and an origin
that sends more than one response for one request never makes the client see two.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import httptools
import pytest

from .support import Closed, Conn, OriginServer, ProxyLauncher

REJECT, ONE, EITHER = "reject", "one", "either"

Build = Callable[[bytes, bytes], bytes]


def smuggled(h: bytes) -> bytes:
    """The hidden request."""
    return b"GET http://" + h + b"/smuggled HTTP/1.1\r\nHost: " + h + b"\r\n\r\n"


def z(h: bytes) -> bytes:
    """An empty chunked body followed by the hidden request: what a CL.TE desync hides."""
    return b"0\r\n\r\n" + smuggled(h)


def chunked(
    data: bytes, size: bytes | None = None, ext: bytes = b"", end: bytes = b"\r\n"
) -> bytes:
    """``data`` as one chunk (with a chunk-size line ``size`` if given) and the last chunk."""
    line = (b"%x" % len(data) if size is None else size) + ext + b"\r\n"
    return line + data + end + b"0\r\n\r\n"


def req(
    h: bytes,
    n: bytes,
    fields: bytes,
    body: bytes = b"",
    method: bytes = b"POST",
    version: bytes = b"HTTP/1.1",
    target: bytes | None = None,
    eol: bytes = b"\r\n",
) -> bytes:
    """A request to ``http://h/v/n`` with ``fields`` (complete lines) and ``body``."""
    t = target if target is not None else b"http://" + h + b"/v/" + n
    return method + b" " + t + b" " + version + eol + b"Host: " + h + eol + fields + eol + body


def cl(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n" % len(body)


@dataclass(frozen=True)
class Vector:
    name: str
    build: Build
    expect: str
    why: str
    statuses: tuple[int, ...] = (400,)
    #: the body the origin must receive when the request is forwarded
    body: Callable[[bytes], bytes] | None = None
    method: str = "POST"
    #: the proxy may reset the connection before answering (it did not read all we sent)
    may_reset: bool = False


def S(h: bytes) -> bytes:
    return smuggled(h)


def padded(h: bytes) -> bytes:
    """The hidden request padded to 0xAA bytes, so its chunk size has hex letters."""
    s = smuggled(h)
    return s + b"X" * (0xAA - len(s))


V = Vector
REQUEST_VECTORS: list[Vector] = [
    # -- Content-Length and Transfer-Encoding together (RFC 9112 §6.1, §6.3) ----------------
    V(
        "cl_te",
        lambda h, n: req(h, n, cl(z(h)) + b"Transfer-Encoding: chunked\r\n", z(h)),
        REJECT,
        "CL.TE (Watchfire 2005, PortSwigger 2019): §6.1 lets a server reject a message "
        "with both; a proxy must never forward it with either framing alone",
    ),
    V(
        "te_cl",
        lambda h, n: req(
            h,
            n,
            b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n" % len(b"%x\r\n" % len(S(h))),
            chunked(S(h)),
        ),
        REJECT,
        "TE.CL: the CL-honouring reading ends after the chunk-size line",
    ),
    V(
        "cl_zero_te",
        lambda h, n: req(
            h, n, b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n", chunked(S(h))
        ),
        REJECT,
        "CL 0 with TE: the 0.CL / CL.0 family (Kettle 2025)",
    ),
    V(
        "cl_te_http10",
        lambda h, n: req(
            h, n, cl(z(h)) + b"Transfer-Encoding: chunked\r\n", z(h), version=b"HTTP/1.0"
        ),
        REJECT,
        "CL+TE in HTTP/1.0 (§6.1: faulty framing)",
    ),
    # -- Content-Length values (RFC 9110 §8.6) ----------------------------------------------
    V(
        "cl_conflict",
        lambda h, n: req(h, n, cl(z(h)) + b"Content-Length: 0\r\n", z(h)),
        REJECT,
        "differing Content-Length fields: §6.3 item 5 makes this unrecoverable",
    ),
    V(
        "cl_duplicate_same",
        lambda h, n: req(h, n, cl(S(h)) + cl(S(h)), S(h)),
        EITHER,
        "identical duplicates: §8.6 allows accepting them as one value, or rejecting",
        body=S,
    ),
    V(
        "cl_list_same",
        lambda h, n: req(h, n, b"Content-Length: %d, %d\r\n" % ((len(S(h)),) * 2), S(h)),
        EITHER,
        "'N, N' list: §8.6 MAY accept a list of identical values, or reject",
        body=S,
    ),
    V(
        "cl_list_differ",
        lambda h, n: req(h, n, b"Content-Length: %d, 0\r\n" % len(S(h)), S(h)),
        REJECT,
        "'N, 0': differing values in one field",
    ),
    V(
        "cl_plus",
        lambda h, n: req(h, n, b"Content-Length: +%d\r\n" % len(S(h)), S(h)),
        REJECT,
        "'+N' is not 1*DIGIT; strtol-style parsers accept it (Watchfire 2005)",
    ),
    V(
        "cl_negative",
        lambda h, n: req(h, n, b"Content-Length: -1\r\n", S(h)),
        REJECT,
        "negative length",
    ),
    V(
        "cl_leading_zeros",
        lambda h, n: req(h, n, b"Content-Length: 000%d\r\n" % len(S(h)), S(h)),
        ONE,
        "leading zeros are valid 1*DIGIT; a parser reading them as octal or 0 would see the "
        "hidden request",
        body=S,
    ),
    V(
        "cl_hex",
        lambda h, n: req(h, n, b"Content-Length: 0x%x\r\n" % len(S(h)), S(h)),
        REJECT,
        "hex is not 1*DIGIT",
    ),
    V(
        "cl_overflow_wrap",
        lambda h, n: req(h, n, b"Content-Length: 18446744073709551617\r\n", S(h)),
        REJECT,
        "2**64+1 wraps to 1 in a naive 64-bit parser",
        statuses=(400, 413),
    ),
    V(
        "cl_inner_space",
        lambda h, n: req(h, n, b"Content-Length: 1 %d\r\n" % len(S(h)), S(h)),
        REJECT,
        "space inside the number",
    ),
    V(
        "cl_trailing_ows",
        lambda h, n: req(h, n, b"Content-Length: %d \r\n" % len(S(h)), S(h)),
        ONE,
        "trailing OWS is not part of the field value (RFC 9112 §5.1)",
        body=S,
    ),
    V(
        "cl_empty",
        lambda h, n: req(h, n, b"Content-Length: \r\n", S(h)),
        REJECT,
        "empty Content-Length",
    ),
    V(
        "cl_space_before_colon",
        lambda h, n: req(h, n, b"Content-Length : %d\r\n" % len(S(h)), S(h)),
        REJECT,
        "§5.1: whitespace between field name and colon MUST be rejected with 400",
    ),
    V(
        "cl_obs_fold",
        lambda h, n: req(h, n, b"Content-Length:\r\n %d\r\n" % len(S(h)), S(h)),
        REJECT,
        "obs-fold (§5.2): a proxy MUST reject or replace it; we reject it for framing fields",
    ),
    V(
        "cl_hidden_by_fold",
        lambda h, n: req(h, n, b"X-A: b\r\n Content-Length: %d\r\n" % len(S(h)), S(h)),
        REJECT,
        "a Content-Length visible to one parser and folded away for another: the V-H "
        "discrepancy of 'HTTP/1.1 must die' (2025)",
    ),
    V(
        "get_with_body",
        lambda h, n: req(h, n, cl(S(h)), S(h), method=b"GET"),
        ONE,
        "GET with Content-Length (0.CL, Kettle 2025; Watchfire 2005): the body is framed by "
        "CL whatever the method",
        body=S,
        method="GET",
    ),
    V(
        "head_with_body",
        lambda h, n: req(h, n, cl(S(h)), S(h), method=b"HEAD"),
        ONE,
        "HEAD with a body: framed by CL all the same",
        body=S,
        method="HEAD",
    ),
    V(
        "options_with_body",
        lambda h, n: req(h, n, cl(S(h)), S(h), method=b"OPTIONS"),
        ONE,
        "OPTIONS with a body",
        body=S,
        method="OPTIONS",
    ),
    V(
        "expect_continue_body",
        lambda h, n: req(h, n, b"Expect: 100-continue\r\n" + cl(S(h)), S(h)),
        ONE,
        "Expect: 100-continue with the body sent at once (Expect-based desyncs, Kettle 2025)",
        body=S,
    ),
    V(
        "upgrade_with_body",
        lambda h, n: req(
            h, n, b"Upgrade: websocket\r\nConnection: Upgrade\r\n" + cl(S(h)), S(h), method=b"GET"
        ),
        ONE,
        "Upgrade with a body (h2c smuggling, 2020): the proxy never upgrades, the body is "
        "still the body",
        body=S,
        method="GET",
    ),
    V(
        "connect_denied_with_body",
        lambda h, n: req(h, n, cl(S(h)), S(h), method=b"CONNECT", target=h),
        REJECT,
        "CONNECT to a port the policy denies, with 'content': 403 and close, no tunnel, "
        "nothing after the head is read as a request",
        statuses=(403,),
        method="CONNECT",
    ),
    # -- Transfer-Encoding variants (TE.TE obfuscation, PortSwigger 2019) --------------------
    V(
        "te_trailing_space_cl",
        lambda h, n: req(h, n, cl(z(h)) + b"Transfer-Encoding: chunked \r\n", z(h)),
        REJECT,
        "'chunked ' is chunked (trailing OWS): with CL it is CL.TE",
    ),
    V(
        "te_trailing_space",
        lambda h, n: req(h, n, b"Transfer-Encoding: chunked \r\n", chunked(S(h))),
        ONE,
        "'chunked ' alone is chunked",
        body=S,
    ),
    V(
        "te_xchunked_cl",
        lambda h, n: req(h, n, cl(z(h)) + b"Transfer-Encoding: xchunked\r\n", z(h)),
        REJECT,
        "unknown coding with CL",
        statuses=(400, 501),
    ),
    V(
        "te_tab_cl",
        lambda h, n: req(h, n, cl(z(h)) + b"Transfer-Encoding:\tchunked\r\n", z(h)),
        REJECT,
        "HTAB is OWS: this is CL.TE",
    ),
    V(
        "te_tab",
        lambda h, n: req(h, n, b"Transfer-Encoding:\tchunked\r\n", chunked(S(h))),
        ONE,
        "HTAB before the value is OWS: chunked",
        body=S,
    ),
    V(
        "te_space_before_colon",
        lambda h, n: req(h, n, cl(z(h)) + b"Transfer-Encoding : chunked\r\n", z(h)),
        REJECT,
        "§5.1: space before the colon MUST be rejected (400)",
    ),
    V(
        "te_chunked_identity",
        lambda h, n: req(h, n, b"Transfer-Encoding: chunked, identity\r\n", chunked(S(h))),
        REJECT,
        "§6.3: chunked not final in a request: 400 and close",
        statuses=(400, 501),
    ),
    V(
        "te_identity_cl",
        lambda h, n: req(h, n, cl(z(h)) + b"Transfer-Encoding: identity\r\n", z(h)),
        REJECT,
        "'identity' (removed from the registry) with CL",
        statuses=(400, 501),
    ),
    V(
        "te_identity",
        lambda h, n: req(h, n, b"Transfer-Encoding: identity\r\n", z(h)),
        REJECT,
        "TE present but not chunked in a request: §6.3 400",
        statuses=(400, 501),
    ),
    V(
        "te_obs_fold",
        lambda h, n: req(h, n, cl(z(h)) + b"Transfer-Encoding:\r\n chunked\r\n", z(h)),
        REJECT,
        "TE value on an obs-fold line",
    ),
    V(
        "te_hidden_by_fold",
        lambda h, n: req(h, n, cl(z(h)) + b"X-A: b\r\n Transfer-Encoding: chunked\r\n", z(h)),
        REJECT,
        "TE folded into another field: hidden from one parser, visible to another",
    ),
    V(
        "te_double_chunked_identity",
        lambda h, n: req(
            h, n, b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", chunked(S(h))
        ),
        REJECT,
        "two TE fields combine to 'chunked, identity'",
        statuses=(400, 501),
    ),
    V(
        "te_double_identity_chunked_cl",
        lambda h, n: req(
            h, n, cl(z(h)) + b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n", z(h)
        ),
        REJECT,
        "TE 'identity, chunked' plus CL",
        statuses=(400, 501),
    ),
    V(
        "te_double_chunked",
        lambda h, n: req(
            h, n, b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", chunked(S(h))
        ),
        REJECT,
        "chunked twice (§7: MUST NOT apply chunked more than once)",
        statuses=(400, 501),
    ),
    V(
        "te_underscore",
        lambda h, n: req(h, n, cl(z(h)) + b"Transfer_Encoding: chunked\r\n", z(h)),
        EITHER,
        "'Transfer_Encoding' is a different (legal) field name; framing is by CL. Some "
        "back ends map '_' to '-' (CGI), so rejecting is fine too",
        body=z,
    ),
    V(
        "te_uppercase",
        lambda h, n: req(h, n, b"Transfer-Encoding: CHUNKED\r\n", chunked(S(h))),
        ONE,
        "codings are case-insensitive (RFC 9110 §10.1.4): CHUNKED is chunked, legal",
        body=S,
    ),
    V(
        "te_mixed_case_name",
        lambda h, n: req(h, n, b"tRANSFER-eNCODING: Chunked\r\n", chunked(S(h))),
        ONE,
        "field names are case-insensitive",
        body=S,
    ),
    V(
        "te_uppercase_cl",
        lambda h, n: req(h, n, cl(z(h)) + b"Transfer-Encoding: CHUNKED\r\n", z(h)),
        REJECT,
        "CHUNKED is chunked: with CL this is CL.TE",
    ),
    V(
        "te_quoted",
        lambda h, n: req(h, n, cl(z(h)) + b'Transfer-Encoding: "chunked"\r\n', z(h)),
        REJECT,
        "quoted coding name",
        statuses=(400, 501),
    ),
    V(
        "te_vertical_tab",
        lambda h, n: req(h, n, cl(z(h)) + b"Transfer-Encoding: \x0bchunked\r\n", z(h)),
        REJECT,
        "VT is not OWS (some parsers strip it as whitespace)",
    ),
    V(
        "te_empty_list_element",
        lambda h, n: req(h, n, b"Transfer-Encoding: , chunked\r\n", chunked(S(h))),
        EITHER,
        "RFC 9110 §5.6.1: empty list elements are to be ignored, so this is chunked; a "
        "proxy rejecting it is safe",
        statuses=(400, 501),
        body=S,
    ),
    V(
        "te_chunked_parameter",
        lambda h, n: req(h, n, b"Transfer-Encoding: chunked;q=1\r\n", chunked(S(h))),
        REJECT,
        "chunked takes no parameters",
        statuses=(400, 501),
    ),
    V(
        "te_nul",
        lambda h, n: req(h, n, cl(z(h)) + b"Transfer-Encoding: chunked\x00\r\n", z(h)),
        REJECT,
        "NUL after the coding (C-string parsers stop there)",
    ),
    V(
        "te_http10",
        lambda h, n: req(
            h, n, b"Transfer-Encoding: chunked\r\n", chunked(S(h)), version=b"HTTP/1.0"
        ),
        EITHER,
        "chunked from an HTTP/1.0 client: §6.1 faulty framing, must close after",
        statuses=(400, 501),
        body=S,
    ),
    # -- line endings, control characters, field syntax (RFC 9112 §2.2, §5; RFC 9110 §5.5) ---
    V(
        "bare_lf_lines",
        lambda h, n: req(h, n, b"Content-Length: %d\n" % len(S(h)), S(h), eol=b"\n"),
        EITHER,
        "§2.2: a recipient MAY accept bare LF line ends",
        body=S,
    ),
    V(
        "bare_lf_hides_te",
        lambda h, n: req(h, n, cl(z(h)) + b"X-A: a\nTransfer-Encoding: chunked\r\n", z(h)),
        REJECT,
        "bare LF inside a field: if it ends the line, this is CL.TE",
    ),
    V(
        "bare_cr_hides_te",
        lambda h, n: req(h, n, cl(z(h)) + b"X-A: a\rTransfer-Encoding: chunked\r\n", z(h)),
        EITHER,
        "§2.2: a bare CR MUST be treated as invalid or replaced by SP (then framing is by "
        "CL); never forwarded as is",
        body=z,
    ),
    V(
        "bare_cr_request_line",
        lambda h, n: req(h, n, cl(S(h)), S(h), version=b"HTTP/1.1\rX: y"),
        REJECT,
        "bare CR in the request line",
        statuses=(400, 505),
    ),
    V(
        "nul_in_field_name",
        lambda h, n: req(h, n, b"X-F\x00oo: b\r\n" + cl(S(h)), S(h)),
        REJECT,
        "NUL in a field name is not a token",
    ),
    V(
        "nul_in_field_value",
        lambda h, n: req(h, n, b"X-Foo: a\x00b\r\n" + cl(S(h)), S(h)),
        EITHER,
        "RFC 9110 §5.5: reject, or replace NUL with SP before forwarding",
        body=S,
    ),
    V(
        "nul_in_target",
        lambda h, n: req(h, n, cl(S(h)), S(h), target=b"http://" + h + b"/v/" + n + b"\x00x"),
        REJECT,
        "NUL in the request target",
    ),
    V(
        "space_in_field_name",
        lambda h, n: req(h, n, cl(z(h)) + b"Transfer Encoding: chunked\r\n", z(h)),
        REJECT,
        "a space inside a field name",
    ),
    V(
        "field_without_colon",
        lambda h, n: req(h, n, cl(z(h)) + b"Transfer-Encoding chunked\r\n", z(h)),
        REJECT,
        "a field line with no colon",
    ),
    V(
        "whitespace_before_first_field",
        lambda h, n: (
            b"POST http://"
            + h
            + b"/v/"
            + n
            + b" HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: "
            + h
            + b"\r\n"
            + cl(z(h))
            + b"\r\n"
            + z(h)
        ),
        EITHER,
        "§2.2: a whitespace-preceded line after the start line MUST be rejected or ignored "
        "(then framing is by CL)",
        body=z,
    ),
    V(
        "leading_empty_line",
        lambda h, n: b"\r\n" + req(h, n, cl(S(h)), S(h)),
        ONE,
        "§2.2: a server SHOULD ignore at least one empty line before the request line",
        body=S,
    ),
    V(
        "del_in_field_value",
        lambda h, n: req(h, n, b"X-Foo: a\x7fb\r\n" + cl(S(h)), S(h)),
        EITHER,
        "DEL is not a field-vchar",
        body=S,
    ),
    # -- chunked bodies (RFC 9112 §7.1; "Funky chunks" 2025) ---------------------------------
    V(
        "chunk_size_negative",
        lambda h, n: req(h, n, b"Transfer-Encoding: chunked\r\n", chunked(S(h), size=b"-1")),
        REJECT,
        "negative chunk size",
    ),
    V(
        "chunk_size_overflow",
        lambda h, n: req(
            h, n, b"Transfer-Encoding: chunked\r\n", chunked(S(h), size=b"ffffffffffffffffff")
        ),
        REJECT,
        "chunk size over 64 bits",
        statuses=(400, 413),
    ),
    V(
        "chunk_size_wraps",
        lambda h, n: req(h, n, b"Transfer-Encoding: chunked\r\n", b"10000000000000000\r\n" + z(h)),
        REJECT,
        "2**64 wraps to 0 in a naive parser: the hidden request follows the 'last chunk'",
        statuses=(400, 413),
    ),
    V(
        "chunk_size_0x",
        lambda h, n: req(
            h, n, b"Transfer-Encoding: chunked\r\n", chunked(S(h), size=b"0x%x" % len(S(h)))
        ),
        REJECT,
        "'0x' prefix (strtol accepts it)",
    ),
    V(
        "chunk_size_plus",
        lambda h, n: req(
            h, n, b"Transfer-Encoding: chunked\r\n", chunked(S(h), size=b"+%x" % len(S(h)))
        ),
        REJECT,
        "'+' sign",
    ),
    V(
        "chunk_size_leading_space",
        lambda h, n: req(
            h, n, b"Transfer-Encoding: chunked\r\n", chunked(S(h), size=b" %x" % len(S(h)))
        ),
        REJECT,
        "leading space in the chunk size",
    ),
    V(
        "chunk_size_trailing_space",
        lambda h, n: req(
            h, n, b"Transfer-Encoding: chunked\r\n", chunked(S(h), size=b"%x " % len(S(h)))
        ),
        EITHER,
        "BWS is allowed only before ';': reject, or (the proxy re-chunks) forward the same data",
        body=S,
    ),
    V(
        "chunk_size_leading_zeros",
        lambda h, n: req(
            h,
            n,
            b"Transfer-Encoding: chunked\r\n",
            chunked(S(h), size=b"0000000000000000000%x" % len(S(h))),
        ),
        ONE,
        "leading zeros are valid 1*HEXDIG",
        body=S,
    ),
    V(
        "chunk_size_uppercase_hex",
        lambda h, n: req(h, n, b"Transfer-Encoding: chunked\r\n", chunked(padded(h), size=b"AA")),
        ONE,
        "uppercase hex digits are valid",
        body=padded,
    ),
    V(
        "chunk_ext_long",
        lambda h, n: req(
            h, n, b"Transfer-Encoding: chunked\r\n", chunked(S(h), ext=b";" + b"a" * 100_000)
        ),
        EITHER,
        "a 100 kB chunk extension: reject or ignore, never buffer without bound",
        statuses=(400, 413, 431),
        body=S,
        may_reset=True,
    ),
    V(
        "chunk_ext_quoted",
        lambda h, n: req(h, n, b"Transfer-Encoding: chunked\r\n", chunked(S(h), ext=b';a="x;y"')),
        ONE,
        "a quoted extension value containing ';' is valid",
        body=S,
    ),
    V(
        "chunk_ext_quoted_crlf",
        lambda h, n: req(
            h, n, b"Transfer-Encoding: chunked\r\n", b'1;a="\r\nx\r\n0\r\n\r\n' + S(h) + b'"\r\n'
        ),
        REJECT,
        "CRLF inside a quoted extension: a parser honouring the quotes reads on, one "
        "that does not stops at the CRLF ('Funky chunks')",
        statuses=(400,),
    ),
    V(
        "chunk_ext_bare_lf",
        lambda h, n: req(h, n, b"Transfer-Encoding: chunked\r\n", chunked(S(h), ext=b";a\nxx")),
        REJECT,
        "bare LF ends the chunk line for one parser, not for another ('Funky chunks')",
    ),
    V(
        "chunk_ext_bare_cr",
        lambda h, n: req(h, n, b"Transfer-Encoding: chunked\r\n", chunked(S(h), ext=b";a\rb")),
        REJECT,
        "bare CR in a chunk extension",
    ),
    V(
        "chunk_data_not_crlf",
        lambda h, n: req(h, n, b"Transfer-Encoding: chunked\r\n", b"5\r\nhelloXX0\r\n\r\n" + S(h)),
        REJECT,
        "two bytes other than CRLF after the chunk data: a parser that skips any two "
        "bytes ends the body and reads the hidden request (TERM.EXT)",
    ),
    V(
        "chunk_data_bare_lf",
        lambda h, n: req(h, n, b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\n0\r\n\r\n" + S(h)),
        REJECT,
        "LF alone after the chunk data ('Funky chunks' line-terminator discrepancy)",
    ),
    V(
        "chunk_size_bare_lf",
        lambda h, n: req(h, n, b"Transfer-Encoding: chunked\r\n", b"5\nhello\r\n0\r\n\r\n" + S(h)),
        REJECT,
        "LF alone after the chunk size",
    ),
    V(
        "chunk_data_too_long",
        lambda h, n: req(
            h, n, b"Transfer-Encoding: chunked\r\n", b"3\r\nhello\r\n0\r\n\r\n" + S(h)
        ),
        REJECT,
        "more data than the chunk size",
    ),
    V(
        "chunk_missing_last_chunk",
        lambda h, n: req(h, n, b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n" + S(h)),
        REJECT,
        "the hidden request where the next chunk size belongs",
    ),
    V(
        "chunk_last_without_crlf",
        lambda h, n: req(h, n, b"Transfer-Encoding: chunked\r\n", b"0\r\n" + S(h)),
        REJECT,
        "the last chunk not followed by the empty line: the request line is a trailer "
        "line without a colon",
    ),
    V(
        "chunk_trailer_cl",
        lambda h, n: req(
            h,
            n,
            b"Transfer-Encoding: chunked\r\n",
            b"%x\r\n" % len(S(h)) + S(h) + b"\r\n0\r\nContent-Length: 5\r\n\r\n",
        ),
        EITHER,
        "a Content-Length trailer (§7.1.2: framing fields are not allowed in trailers; "
        "drop or reject)",
        body=S,
    ),
    V(
        "chunk_trailer_obs_fold",
        lambda h, n: req(
            h,
            n,
            b"Transfer-Encoding: chunked\r\n",
            b"%x\r\n" % len(S(h)) + S(h) + b"\r\n0\r\nX-T: a\r\n b\r\n\r\n",
        ),
        REJECT,
        "obs-fold in the trailer section",
    ),
    # -- request line and version (RFC 9112 §2.3, §3) ----------------------------------------
    V(
        "version_2_0",
        lambda h, n: req(h, n, cl(S(h)), S(h), version=b"HTTP/2.0"),
        REJECT,
        "HTTP/2.0 in an HTTP/1 request line",
        statuses=(400, 505),
    ),
    V(
        "version_1_2",
        lambda h, n: req(h, n, cl(S(h)), S(h), version=b"HTTP/1.2"),
        EITHER,
        "HTTP/1.2: may be served as 1.1 or refused with 505",
        statuses=(400, 505),
        body=S,
    ),
    V(
        "version_0_9",
        lambda h, n: b"GET http://" + h + b"/v/" + n + b"\r\n" + S(h),
        REJECT,
        "HTTP/0.9 request line (no version): no 0.9 support in a proxy",
        statuses=(400, 505),
        method="GET",
    ),
    V(
        "version_lowercase",
        lambda h, n: req(h, n, cl(S(h)), S(h), version=b"http/1.1"),
        REJECT,
        "the version is case-sensitive",
        statuses=(400, 505),
    ),
    V(
        "version_two_digit_minor",
        lambda h, n: req(h, n, cl(S(h)), S(h), version=b"HTTP/1.10"),
        REJECT,
        "HTTP-version is one digit '.' one digit",
        statuses=(400, 505),
    ),
    V(
        "version_missing",
        lambda h, n: req(h, n, cl(S(h)), S(h), version=b""),
        REJECT,
        "request line ending in a space, no version",
        statuses=(400, 505),
    ),
    V(
        "request_line_double_space",
        lambda h, n: req(h, n, cl(S(h)), S(h), method=b"POST ", target=b"http://" + h + b"/v/" + n),
        EITHER,
        "§3: a recipient MAY parse on whitespace-delimited word boundaries",
        body=S,
    ),
    V(
        "request_line_tab",
        lambda h, n: req(
            h, n, cl(S(h)), S(h), method=b"POST\t", target=b"http://" + h + b"/v/" + n
        ),
        EITHER,
        "HTAB between method and target",
        body=S,
    ),
    V(
        "request_line_trailing_space",
        lambda h, n: req(h, n, cl(S(h)), S(h), version=b"HTTP/1.1 "),
        EITHER,
        "a space after the version",
        statuses=(400, 505),
        body=S,
    ),
    V(
        "absolute_url_space",
        lambda h, n: req(h, n, cl(S(h)), S(h), target=b"http://" + h + b"/v/" + n + b" x"),
        REJECT,
        "whitespace in the URL: one parser sees 'x' as the version",
        statuses=(400, 505),
    ),
    V(
        "absolute_url_space_in_authority",
        lambda h, n: req(
            h, n, cl(S(h)), S(h), target=b"http://" + h.replace(b":", b" :") + b"/v/" + n
        ),
        REJECT,
        "whitespace inside the authority",
        statuses=(400, 505),
    ),
    V(
        "absolute_url_tab",
        lambda h, n: req(h, n, cl(S(h)), S(h), target=b"http://" + h + b"/v/" + n + b"\tx"),
        REJECT,
        "HTAB in the URL",
    ),
    V(
        "absolute_url_crlf",
        lambda h, n: req(h, n, cl(S(h)), S(h), target=b"http://" + h + b"/v/" + n + b"\r\nX-Y: z"),
        REJECT,
        "CRLF in the URL (header injection into the forwarded request)",
        statuses=(400, 505),
    ),
    V(
        "method_lowercase",
        lambda h, n: req(h, n, cl(S(h)), S(h), method=b"post"),
        EITHER,
        "methods are case-sensitive: 'post' is an unknown method (400 or 501), or "
        "forwarded as such",
        statuses=(400, 501),
        body=S,
    ),
    V(
        "method_unknown",
        lambda h, n: req(h, n, cl(S(h)), S(h), method=b"FOO"),
        EITHER,
        "an unknown method: 501 or forwarded",
        statuses=(400, 501),
        body=S,
    ),
    # -- limits ---------------------------------------------------------------------------------
    V(
        "huge_header",
        lambda h, n: req(h, n, b"X-Big: " + b"a" * 70_000 + b"\r\n" + cl(S(h)), S(h)),
        REJECT,
        "a head over [limits] max_header_size",
        statuses=(431, 400),
        may_reset=True,
    ),
    V(
        "many_headers",
        lambda h, n: req(h, n, b"".join(b"X-%d: y\r\n" % i for i in range(300)) + cl(S(h)), S(h)),
        REJECT,
        "more fields than [limits] max_headers",
        statuses=(431, 400),
    ),
    V(
        "long_target",
        lambda h, n: req(
            h, n, cl(S(h)), S(h), target=b"http://" + h + b"/v/" + n + b"/" + b"a" * 70_000
        ),
        REJECT,
        "a target over [limits] max_target",
        statuses=(414, 431, 400),
        may_reset=True,
    ),
]

_names = [v.name for v in REQUEST_VECTORS]
assert len(_names) == len(set(_names)), "duplicate vector names"


# -- upstream responses -------------------------------------------------------------------------


@dataclass(frozen=True)
class RespVector:
    name: str
    data: bytes
    expect: str  # "502", "502_or_ok" (body b"hello"), "502_or_cut"
    why: str
    close: bool = True


HELLO_CHUNKED = b"5\r\nhello\r\n0\r\n\r\n"
R = RespVector
RESPONSE_VECTORS: list[RespVector] = [
    R(
        "resp_cl_te",
        b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n"
        + HELLO_CHUNKED,
        "502",
        "CL and TE in a response (RFC 9112 §6.3 item 3: a proxy must not relay it as is)",
    ),
    R(
        "resp_te_cl",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
        + HELLO_CHUNKED,
        "502",
        "TE then CL",
    ),
    R(
        "resp_cl_conflict",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
        "502",
        "conflicting Content-Length: §6.3 item 5, a proxy MUST 502 and discard",
    ),
    R(
        "resp_cl_duplicate_same",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        "502_or_ok",
        "identical duplicates: accept as one or reject",
    ),
    R(
        "resp_cl_list",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
        "502_or_ok",
        "'5, 5': accept as one or reject",
    ),
    R("resp_cl_plus", b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello", "502", "'+5'"),
    R("resp_cl_negative", b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nhello", "502", "'-5'"),
    R("resp_cl_hex", b"HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\nhello", "502", "'0x5'"),
    R(
        "resp_obs_fold",
        b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 5\r\n\r\nhello",
        "502",
        "obs-fold in a response: §5.2 a proxy MUST replace or reject; rejecting is what we ask",
    ),
    R(
        "resp_obs_fold_te",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\n chunked\r\n\r\n" + HELLO_CHUNKED,
        "502",
        "TE on an obs-fold line",
    ),
    R(
        "resp_space_before_colon",
        b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello",
        "502",
        "§5.1: whitespace before the colon MUST be rejected (or removed) by a proxy",
    ),
    R(
        "resp_space_in_name",
        b"HTTP/1.1 200 OK\r\nContent Length: 5\r\n\r\nhello",
        "502",
        "space inside a field name",
    ),
    R(
        "resp_nul_value",
        b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 5\r\n\r\nhello",
        "502",
        "NUL in a field value (RFC 9110 §5.5)",
    ),
    R(
        "resp_bare_cr",
        b"HTTP/1.1 200 OK\r\nX-A: a\rSet-Cookie: x=1\r\nContent-Length: 5\r\n\r\nhello",
        "502",
        "bare CR: a header injected for a CR-splitting client",
    ),
    R(
        "resp_bare_lf",
        b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello",
        "502_or_ok",
        "bare LF line ends (§2.2 MAY accept)",
    ),
    R(
        "resp_te_xchunked_cl",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\nhello",
        "502",
        "unknown coding with CL",
    ),
    R(
        "resp_version_2",
        b"HTTP/2.0 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        "502",
        "HTTP/2.0 status line on an HTTP/1.1 connection",
    ),
    R("resp_http09", b"hello, no status line at all\r\n", "502", "an HTTP/0.9-style answer"),
    R(
        "resp_status_4digits",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 5\r\n\r\nhello",
        "502",
        "status code of four digits",
    ),
    R(
        "resp_101_unasked",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\nhello",
        "502",
        "101 without an Upgrade request",
    ),
    R(
        "resp_chunk_bad_size",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        "502_or_cut",
        "non-hex chunk size",
    ),
    R(
        "resp_chunk_overflow",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        "502_or_cut",
        "chunk size over 64 bits",
    ),
    R(
        "resp_chunk_negative",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
        "502_or_cut",
        "negative chunk size",
    ),
    R(
        "resp_chunk_not_crlf",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        "502_or_cut",
        "chunk data not followed by CRLF",
    ),
    R(
        "resp_chunk_bare_lf",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
        "502_or_cut",
        "bare LF in chunk lines",
    ),
    R(
        "resp_truncated",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello",
        "502_or_cut",
        "the origin closes after 5 of 100 bytes",
    ),
]

#: An origin answering one request with more than one response ("response splitting" and
#: response-queue poisoning): the client must see exactly one response, and its next request
#: on the same connection must get the origin's real answer, never the leftover.
SPLIT_VECTORS: list[tuple[str, str, bytes, str]] = [
    (
        "split_extra_response",
        "GET",
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
        ),
        "a second response after the first",
    ),
    (
        "split_204_with_body",
        "GET",
        (
            b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
        ),
        "bytes after a 204 (no body)",
    ),
    (
        "split_304_with_body",
        "GET",
        (
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 40\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
        ),
        "a 304 never has a body",
    ),
    (
        "split_head_with_body",
        "HEAD",
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 45\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
        ),
        "a body sent for HEAD",
    ),
    (
        "split_after_chunked",
        "GET",
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nok\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
        ),
        "a response after the last chunk",
    ),
    (
        "split_interim_then_two",
        "GET",
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"
            b"Content-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
        ),
        "1xx, the response, and an extra one",
    ),
]

#: valid request, then garbage pipelined after it: the valid request is served, then 400
PIPELINE_VECTORS = ["pipelined_garbage_after_valid_request"]

VECTOR_COUNT = (
    len(REQUEST_VECTORS) + len(RESPONSE_VECTORS) + len(SPLIT_VECTORS) + len(PIPELINE_VECTORS)
)


def test_the_corpus_has_at_least_40_vectors() -> None:
    print(
        f"smuggling corpus: {len(REQUEST_VECTORS)} request, {len(RESPONSE_VECTORS)} response, "
        f"{len(SPLIT_VECTORS)} split, {len(PIPELINE_VECTORS)} pipeline = {VECTOR_COUNT}"
    )
    assert VECTOR_COUNT >= 40
    assert len(REQUEST_VECTORS) >= 40


# -- fixtures -----------------------------------------------------------------------------------

#: what the proxy did with each request vector: "reject 400", "one", ...
OUTCOMES: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_outcomes():
    yield
    if OUTCOMES:
        lines = [f"{name}: {what}" for name, what in OUTCOMES.items()]
        text = "\n".join(lines) + "\n"
        print("\nsmuggling outcomes:\n" + text)
        with open("/tmp/fwproxy-smuggling-outcomes.txt", "w", encoding="utf-8") as f:
            f.write(text)


@pytest.fixture(scope="module")
def proxy(origin: OriginServer, tmp_path_factory: pytest.TempPathFactory):
    """One proxy for the whole corpus (a vector must not be able to harm the next one: each
    test checks the proxy's log for errors)."""
    launcher = ProxyLauncher(tmp_path_factory.mktemp("smuggling"))
    p = launcher.start(
        timeouts={"request_header": 5, "upstream_first_byte": 5},
        limits={"max_header_size": 65536, "max_headers": 200, "max_target": 65536},
    )
    yield p
    launcher.stop_all()


def _strict_heads(raw: bytes) -> tuple[list[bytes], str | None]:
    """The targets of the request heads in ``raw`` by a strict parser, and its error if any."""
    targets: list[bytes] = []

    class P:
        url = b""

        def on_url(self, u: bytes) -> None:
            self.url += u

        def on_headers_complete(self) -> None:
            targets.append(self.url)
            self.url = b""

    parser = httptools.HttpRequestParser(P())
    try:
        parser.feed_data(raw)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError as e:
        return targets, str(e) or type(e).__name__
    return targets, None


def _check_origin(origin: OriginServer) -> None:
    """Nothing smuggled reached the origin, and what it got is cleanly framed."""
    for rec in origin.snapshot():
        assert b"/smuggled" not in rec.target, f"SMUGGLED request reached the origin: {rec}"
        lines = rec.header_lines
        names = rec.names()
        assert names.count(b"content-length") <= 1, f"forwarded with several CL: {lines}"
        assert not (b"content-length" in names and b"transfer-encoding" in names), lines
        for line in [rec.request_line, *lines]:
            assert b"\r" not in line and b"\x00" not in line, f"bare CR/NUL forwarded: {line!r}"
    for raw in origin.raw_snapshot():
        targets, error = _strict_heads(raw)
        assert not any(b"/smuggled" in t for t in targets), f"SMUGGLED: {raw[:400]!r}"
        assert error is None, f"the proxy sent the origin malformed bytes ({error}): {raw[:400]!r}"


def _send(c: Conn, data: bytes) -> None:
    try:
        c.send(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


@pytest.mark.parametrize("v", REQUEST_VECTORS, ids=[v.name for v in REQUEST_VECTORS])
def test_request_vector(proxy, origin: OriginServer, v: Vector) -> None:
    h = origin.authority.encode()
    data = v.build(h, v.name.encode())
    mark = len(proxy.output())
    with Conn(proxy.address, timeout=10) as c:
        _send(c, data)
        try:
            resp = c.response(v.method, timeout=10)
        except Closed:
            resp = None
        if resp is None:
            assert v.may_reset and c.eof, f"{v.name}: the proxy closed without an answer"
            outcome = REJECT
        elif resp.status >= 400:
            outcome = REJECT
            assert resp.status in v.statuses, (
                f"{v.name}: status {resp.status} not in {v.statuses}: {resp.body[:200]!r}"
            )
            assert c.closed_within(5), f"{v.name}: the connection stayed open after {resp.status}"
            assert c.rest() == b"", f"{v.name}: bytes after the error response"
        else:
            outcome = ONE
            assert resp.status == 200, f"{v.name}: {resp.status} {resp.body[:200]!r}"
            # nothing else may come: a second response would mean a second request was served
            closed = c.closed_within(0.3)
            extra = c.rest()
            assert extra == b"", f"{v.name}: a second response: {extra[:300]!r}"
            if v.name == "te_http10":
                assert closed or c.closed_within(5), "HTTP/1.0 + chunked: must close after"
    status = resp.status if resp is not None else "closed"
    OUTCOMES[v.name] = f"{outcome} {status} (expected {v.expect})"
    if v.expect != EITHER:
        assert outcome == v.expect, (
            f"{v.name}: expected {v.expect}, the proxy did {outcome} "
            f"({resp.status if resp else 'no answer'}); {v.why}"
        )
    if outcome == ONE:
        recs = origin.wait_requests(1)
        assert v.body is not None
        assert len(recs) == 1 and recs[0].complete, recs
        assert recs[0].target == b"/v/" + v.name.encode(), recs[0]
        assert recs[0].body == v.body(h), (recs[0].body[:200], v.body(h)[:200])
    time.sleep(0.15)  # let an aborted upstream request land in the origin's records
    if outcome == REJECT:
        complete = [r for r in origin.snapshot() if r.complete]
        assert complete == [], f"{v.name}: rejected, yet the origin got {complete}"
    _check_origin(origin)
    assert len(origin.snapshot()) <= 1
    proxy.assert_clean_log(mark)


@pytest.mark.parametrize("v", RESPONSE_VECTORS, ids=[v.name for v in RESPONSE_VECTORS])
def test_response_vector(proxy, origin: OriginServer, v: RespVector) -> None:
    origin.raw_responses[v.name] = (v.data, v.close)
    mark = len(proxy.output())
    url = f"{origin.url}/raw/{v.name}"
    with Conn(proxy.address, timeout=10) as c:
        c.send(f"GET {url} HTTP/1.1\r\nHost: {origin.authority}\r\n\r\n".encode())
        try:
            resp = c.response("GET", timeout=10)
        except Closed:
            resp = None
        assert resp is not None, f"{v.name}: the connection closed without any response"
        if resp.status == 502:
            assert b"hello" not in resp.body, "the broken response's body leaked"
        elif v.expect == "502_or_ok":
            assert resp.status == 200 and resp.complete and resp.body == b"hello", resp
        elif v.expect == "502_or_cut":
            # the head was relayed before the body went wrong: the client must be able to tell
            assert not resp.complete, f"{v.name}: a broken body was presented complete: {resp}"
            assert c.closed_within(5), f"{v.name}: the cut response's connection stayed open"
        else:
            pytest.fail(f"{v.name}: expected 502, got {resp.status} {resp.body[:200]!r}; {v.why}")
        for k, _ in resp.headers:
            assert b"\x00" not in k and b"\r" not in k
        for _, val in resp.headers:
            assert b"\x00" not in val and b"\r" not in val, resp.headers
    proxy.assert_clean_log(mark)


@pytest.mark.parametrize("name,method,data,why", SPLIT_VECTORS, ids=[s[0] for s in SPLIT_VECTORS])
def test_response_splitting_never_yields_two_responses(
    proxy, origin: OriginServer, name: str, method: str, data: bytes, why: str
) -> None:
    origin.raw_responses[name] = (data, False)  # keep the origin connection open: tempt reuse
    mark = len(proxy.output())
    a = origin.authority
    with Conn(proxy.address, timeout=10) as c:
        c.send(f"{method} http://{a}/raw/{name} HTTP/1.1\r\nHost: {a}\r\n\r\n".encode())
        first = c.response(method, timeout=10)
        assert first.status in (200, 204, 304), first
        assert b"smuggled" not in first.body
        if c.closed_within(0.3):
            assert c.rest() == b"", "extra bytes after the response"
            return  # closing the client connection is a correct answer too
        assert c.rest() == b"", f"{name}: a second response for one request"
        c.send(f"GET http://{a}/v/after-{name} HTTP/1.1\r\nHost: {a}\r\n\r\n".encode())
        second = c.response("GET", timeout=10)
        assert (second.status, second.body) == (200, b"ok"), (
            f"{name}: the next request got the leftover response: {second}"
        )
        c.closed_within(0.3)
        assert c.rest() == b"", f"{name}: bytes after the second response"
    recs = origin.snapshot()
    assert [r.target for r in recs] == [f"/raw/{name}".encode(), f"/v/after-{name}".encode()]
    proxy.assert_clean_log(mark)


def test_pipelined_garbage_after_valid_request(proxy, origin: OriginServer) -> None:
    """A valid request with a malformed one pipelined behind it (in the same segment): the
    valid request is forwarded and its response delivered, then the garbage gets 400 and the
    connection closes. Answering the *first* request with the 400 would hand the client an
    error for a request the origin may well have processed (a response desync)."""
    a = origin.authority
    mark = len(proxy.output())
    with Conn(proxy.address, timeout=10) as c:
        c.send(
            f"GET http://{a}/v/first HTTP/1.1\r\nHost: {a}\r\n\r\n".encode()
            + b"GARBAGE\x00 / HTTP/1.1\r\n\r\n"
        )
        first = c.response("GET", timeout=10)
        assert (first.status, first.body) == (200, b"ok"), (
            f"the valid first request got {first.status} {first.body[:100]!r}"
        )
        second = c.response("GET", timeout=10)
        assert second.status == 400, second
        assert c.closed_within(5)
    recs = origin.wait_requests(1)
    assert [r.target for r in recs] == [b"/v/first"]
    _check_origin(origin)
    proxy.assert_clean_log(mark)


def test_the_detector_sees_a_desync(origin: OriginServer) -> None:
    """The checks can fail: the origin reads framing like a naive back end, so a CL.TE request
    sent to it directly (no proxy in between) makes it serve the hidden request, which the
    checks above report."""
    h = origin.authority.encode()
    v = next(v for v in REQUEST_VECTORS if v.name == "cl_te")
    with Conn((origin.host, origin.port), timeout=10) as c:
        c.send(v.build(h, b"direct"))
        c.response("POST")
        c.response("GET")
    recs = origin.wait_requests(2)
    assert any(b"/smuggled" in r.target for r in recs)
    with pytest.raises(AssertionError):
        _check_origin(origin)
