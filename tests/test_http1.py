"""Sans-IO tests for :mod:`fwproxy.http1`: bytes in, events out; heads and chunks out."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fwproxy import http1
from fwproxy.http1 import (
    BODY,
    END,
    ERROR,
    HEAD,
    HOP_BY_HOP,
    INTERIM,
    LAST_CHUNK,
    REST,
    ProtocolError,
    RequestHead,
    RequestReader,
    ResponseHead,
    ResponseReader,
    chunk,
    connection_tokens,
    end_to_end,
    request_head,
    response_head,
)

# -- helpers ---------------------------------------------------------------------------------


def feed(reader: RequestReader | ResponseReader, *chunks: bytes) -> list[http1.Event]:
    events: list[http1.Event] = []
    for c in chunks:
        events += reader.feed(c)
    return events


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def norm(events: list[http1.Event]) -> list[tuple]:
    """Comparable events: heads as tuples, adjacent BODY events joined, errors as status."""
    out: list[tuple] = []
    for kind, p in events:
        if kind == BODY:
            if out and out[-1][0] == "BODY":
                out[-1] = ("BODY", out[-1][1] + p)
            else:
                out.append(("BODY", p))
        elif kind == HEAD and isinstance(p, RequestHead):
            out.append(
                (
                    "HEAD",
                    p.method,
                    p.target,
                    p.version,
                    tuple(p.headers),
                    p.keep_alive,
                    p.chunked,
                    p.content_length,
                )
            )
        elif kind in (HEAD, INTERIM):
            assert isinstance(p, ResponseHead)
            out.append(
                (
                    "HEAD" if kind == HEAD else "INTERIM",
                    p.status,
                    p.reason,
                    p.version,
                    tuple(p.headers),
                    p.keep_alive,
                    p.body,
                    p.content_length,
                )
            )
        elif kind == END:
            assert p is None
            out.append(("END",))
        elif kind == REST:
            out.append(("REST", p))
        elif kind == ERROR:
            assert isinstance(p, ProtocolError)
            out.append(("ERROR", p.status))
        else:  # pragma: no cover - a new event kind must be added here
            raise AssertionError(kind)
    return out


def kinds(events: list[http1.Event]) -> list[int]:
    return [k for k, _ in events]


def error_of(events: list[http1.Event]) -> ProtocolError:
    errors = [p for k, p in events if k == ERROR]
    assert len(errors) == 1, events
    assert events[-1][0] == ERROR, "nothing may follow an ERROR"
    assert isinstance(errors[0], ProtocolError)
    return errors[0]


def request_error(data: bytes, **limits: int) -> ProtocolError:
    events = RequestReader(**limits).feed(data)
    assert HEAD not in kinds(events), "a refused head must not be announced"
    return error_of(events)


GET = b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n"
POST_CL = (
    b"POST http://example.com/f HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello"
)
POST_CHUNKED = (
    b"POST http://example.com/c HTTP/1.1\r\nHost: example.com\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6;name=value\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
)
PIPELINE = GET + POST_CL + POST_CHUNKED + GET


# -- requests: the basics --------------------------------------------------------------------


def test_simple_get():
    events = RequestReader().feed(GET)
    assert kinds(events) == [HEAD, END]
    head = events[0][1]
    assert isinstance(head, RequestHead)
    assert head.method == b"GET"
    assert head.target == b"http://example.com/"
    assert head.version == "1.1"
    assert head.headers == [(b"Host", b"example.com")]
    assert head.keep_alive is True
    assert head.chunked is False
    assert head.content_length is None
    assert head.has_body is False
    assert head.size == len(b"http://example.com/") + len(b"Host") + len(b"example.com") + 4


def test_header_names_and_values_are_kept_as_received():
    data = (
        b"GET / HTTP/1.1\r\nhOsT: a\r\nX-Dup: 1\r\nx-dup: 2\r\nX-Tab: a\tb\r\n"
        b"X-Latin: caf\xe9\r\nX-Empty:\r\n\r\n"
    )
    events = RequestReader().feed(data)
    assert kinds(events) == [HEAD, END]
    assert events[0][1].headers == [
        (b"hOsT", b"a"),
        (b"X-Dup", b"1"),
        (b"x-dup", b"2"),
        (b"X-Tab", b"a\tb"),
        (b"X-Latin", b"caf\xe9"),
        (b"X-Empty", b""),
    ]


def test_head_started_tracks_an_incomplete_head():
    r = RequestReader()
    assert r.head_started is False
    assert r.feed(GET[:10]) == []
    assert r.head_started is True
    assert kinds(r.feed(GET[10:])) == [HEAD, END]
    assert r.head_started is False


def test_keep_alive_requests_in_separate_feeds():
    r = RequestReader()
    for target in (b"/1", b"/2", b"/3"):
        events = r.feed(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        assert kinds(events) == [HEAD, END]
        assert events[0][1].target == target
        assert events[0][1].keep_alive is True


EXPECTED_PIPELINE = [
    (
        "HEAD",
        b"GET",
        b"http://example.com/",
        "1.1",
        ((b"Host", b"example.com"),),
        True,
        False,
        None,
    ),
    ("END",),
    (
        "HEAD",
        b"POST",
        b"http://example.com/f",
        "1.1",
        ((b"Host", b"example.com"), (b"Content-Length", b"5")),
        True,
        False,
        5,
    ),
    ("BODY", b"hello"),
    ("END",),
    (
        "HEAD",
        b"POST",
        b"http://example.com/c",
        "1.1",
        ((b"Host", b"example.com"), (b"Transfer-Encoding", b"chunked")),
        True,
        True,
        None,
    ),
    ("BODY", b"hello world"),
    ("END",),
    (
        "HEAD",
        b"GET",
        b"http://example.com/",
        "1.1",
        ((b"Host", b"example.com"),),
        True,
        False,
        None,
    ),
    ("END",),
]


def test_pipelined_requests_in_one_feed():
    assert norm(RequestReader().feed(PIPELINE)) == EXPECTED_PIPELINE


def test_pipelined_requests_byte_by_byte():
    assert norm(feed(RequestReader(), *bytewise(PIPELINE))) == EXPECTED_PIPELINE


@pytest.mark.parametrize("cut", range(0, len(PIPELINE) + 1, 7))
def test_pipelined_requests_split_anywhere(cut):
    assert norm(feed(RequestReader(), PIPELINE[:cut], PIPELINE[cut:])) == EXPECTED_PIPELINE


def test_empty_lines_between_requests_are_skipped():
    events = feed(RequestReader(), GET, b"\r\n" + GET)
    assert kinds(events) == [HEAD, END, HEAD, END]


# -- request bodies --------------------------------------------------------------------------


def test_content_length_body():
    events = RequestReader().feed(POST_CL)
    assert kinds(events) == [HEAD, BODY, END]
    head = events[0][1]
    assert head.content_length == 5 and head.has_body and not head.chunked
    assert events[1][1] == b"hello"


def test_content_length_zero_has_no_body():
    events = RequestReader().feed(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert kinds(events) == [HEAD, END]
    assert events[0][1].content_length == 0
    assert events[0][1].has_body is False


def test_content_length_body_waits_for_the_rest():
    r = RequestReader()
    events = r.feed(POST_CL[:-2])
    assert kinds(events) == [HEAD, BODY]
    assert events[1][1] == b"hel"
    assert norm(r.feed(POST_CL[-2:])) == [("BODY", b"lo"), ("END",)]


CHUNKED = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n3;x=y\r\n123\r\n0\r\n\r\n"


@pytest.mark.parametrize("cut", range(len(CHUNKED) + 1))
def test_chunked_body_split_at_every_offset(cut):
    events = feed(RequestReader(), CHUNKED[:cut], CHUNKED[cut:])
    assert norm(events)[1:] == [("BODY", b"abcdefghijklmnopqrstuvwxyz123"), ("END",)]
    assert events[0][1].chunked is True
    assert events[0][1].content_length is None
    assert events[0][1].has_body is True


def test_chunked_body_byte_by_byte():
    events = feed(RequestReader(), *bytewise(CHUNKED))
    assert norm(events)[1:] == [("BODY", b"abcdefghijklmnopqrstuvwxyz123"), ("END",)]


@pytest.mark.parametrize("coding", [b"chunked", b"Chunked", b"CHUNKED", b" chunked"])
def test_chunked_is_case_insensitive(coding):
    data = b"POST / HTTP/1.1\r\nTransfer-Encoding: " + coding + b"\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    assert norm(RequestReader().feed(data))[1:] == [("BODY", b"hi"), ("END",)]


def test_trailers_are_dropped_and_the_next_request_parses():
    events = RequestReader().feed(POST_CHUNKED + GET)
    heads = [p for k, p in events if k == HEAD]
    assert len(heads) == 2
    for head in heads:
        assert all(k != b"X-Trailer" for k, _ in head.headers)
    assert kinds(events) == [HEAD, BODY, BODY, END, HEAD, END]


def test_bad_chunk_size_is_an_error_after_the_head():
    events = RequestReader().feed(
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
    )
    assert kinds(events) == [HEAD, ERROR]
    assert events[1][1].status == 400


@given(
    body=st.lists(st.binary(min_size=1, max_size=40), max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=5),
)
@settings(max_examples=150, deadline=None)
def test_chunk_serialisation_round_trips_through_the_reader(body, cuts):
    wire = request_head(b"POST", b"/", [(b"Transfer-Encoding", b"chunked")])
    wire += b"".join(b"".join(chunk(piece)) for piece in body) + LAST_CHUNK
    points = sorted({min(c, len(wire)) for c in cuts})
    pieces = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    events = feed(RequestReader(), *pieces)
    got = b"".join(p for k, p in events if k == BODY)
    assert got == b"".join(body)
    assert kinds(events)[0] == HEAD and kinds(events)[-1] == END


# -- CONNECT and Upgrade ---------------------------------------------------------------------

CONNECT = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"


def test_connect_with_tunnel_bytes_after_the_head():
    tls = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
    r = RequestReader()
    events = r.feed(CONNECT + tls)
    assert kinds(events) == [HEAD, END, REST]
    assert events[0][1].method == b"CONNECT"
    assert events[0][1].target == b"example.com:443"
    assert events[2][1] == tls
    # the stream belongs to the tunnel from here on: the reader reads no more of it
    assert r.feed(b"GET / HTTP/1.1\r\n\r\n") == []


def test_connect_alone_gives_an_empty_rest():
    events = RequestReader().feed(CONNECT)
    assert norm(events)[1:] == [("END",), ("REST", b"")]


def test_connect_head_split_byte_by_byte_then_tunnel_bytes():
    events = feed(RequestReader(), *bytewise(CONNECT[:-1]), CONNECT[-1:] + b"tunnel")
    assert kinds(events) == [HEAD, END, REST]
    assert events[-1][1] == b"tunnel"


def test_connect_after_a_pipelined_request():
    events = RequestReader().feed(GET + CONNECT + b"\x16\x03")
    assert kinds(events) == [HEAD, END, HEAD, END, REST]
    assert events[-1][1] == b"\x16\x03"


UPGRADE = (
    b"GET http://example.com/ws HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\n\r\n"
)


@pytest.mark.parametrize("split", [False, True])
def test_upgrade_request_holds_back_what_follows(split):
    # what follows an Upgrade request is the new protocol's only after a 101: the reader hands
    # it over unparsed (REST) and parses nothing more until told
    r = RequestReader()
    chunks = bytewise(UPGRADE) if split else [UPGRADE + GET]
    events = feed(r, *chunks)
    assert kinds(events) == [HEAD, END, REST]
    assert events[0][1].upgrade and r.held
    assert (b"Upgrade", b"websocket") in events[0][1].headers
    assert events[2][1] == (b"" if split else GET)
    assert r.feed(GET) == []


@pytest.mark.parametrize("split", [False, True])
def test_refused_upgrade_resumes_http(split):
    r = RequestReader()
    events = r.feed(UPGRADE + GET[:10])
    assert kinds(events) == [HEAD, END, REST]
    data = events[-1][1] + GET[10:] + GET
    chunks = bytewise(data) if split else [data]
    more = r.resume(chunks[0])
    for c in chunks[1:]:
        more += r.feed(c)
    assert kinds(more) == [HEAD, END, HEAD, END]
    assert not r.held and more[0][1].target == b"http://example.com/"
    assert not more[0][1].upgrade


def test_upgrade_after_a_resumed_upgrade_holds_again():
    r = RequestReader()
    rest = r.feed(UPGRADE + UPGRADE + GET)[-1][1]
    events = r.resume(rest)
    assert kinds(events) == [HEAD, END, REST] and events[-1][1] == GET


def test_resume_without_a_held_upgrade_does_nothing():
    r = RequestReader()
    assert r.resume(GET) == []
    assert kinds(r.feed(GET)) == [HEAD, END]


def test_connect_is_not_held_for_resuming():
    r = RequestReader()
    assert kinds(r.feed(CONNECT + b"\x16")) == [HEAD, END, REST]
    assert not r.held and r.resume(GET) == []


UPGRADE_CL = (
    b"POST http://example.com/ HTTP/1.1\r\nHost: example.com\r\nUpgrade: h2c\r\n"
    b"Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
    b"Content-Length: 38\r\n\r\n"
)
SMUGGLED = b"GET http://internal/ HTTP/1.1\r\n\r\n"  # 33 bytes


@pytest.mark.parametrize("cut", [0, 1, len(UPGRADE_CL), len(UPGRADE_CL) + 10, None])
def test_upgrade_request_body_is_not_read_as_a_request(cut):
    # httptools tells llhttp to skip the body of an Upgrade request: the reader must read it
    # as the body, not as a pipelined request (that would smuggle one past the proxy)
    data = UPGRADE_CL + b"12345" + SMUGGLED + GET
    chunks = bytewise(data) if cut is None else [data[:cut], data[cut:]]
    events = norm(feed(RequestReader(), *chunks))
    assert [e[0] for e in events] == ["HEAD", "BODY", "END", "HEAD", "END"]
    assert events[1] == ("BODY", b"12345" + SMUGGLED)
    assert events[3][2] == b"http://example.com/"


def test_upgrade_request_with_a_chunked_body():
    data = (
        b"POST / HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(chunk(SMUGGLED)) + LAST_CHUNK + GET
    )
    events = norm(RequestReader().feed(data))
    assert [e[0] for e in events] == ["HEAD", "BODY", "END", "HEAD", "END"]
    assert events[1] == ("BODY", SMUGGLED)


# -- versions and keep-alive -----------------------------------------------------------------


@pytest.mark.parametrize(
    "version, headers, keep",
    [
        (b"1.1", b"", True),
        (b"1.1", b"Connection: close\r\n", False),
        (b"1.1", b"Connection: Close\r\n", False),
        (b"1.1", b"Connection: keep-alive\r\n", True),
        (b"1.0", b"", False),
        (b"1.0", b"Connection: keep-alive\r\n", True),
        (b"1.0", b"Connection: Keep-Alive\r\n", True),
        (b"1.0", b"Connection: close\r\n", False),
    ],
)
def test_keep_alive_semantics(version, headers, keep):
    data = b"GET / HTTP/" + version + b"\r\nHost: a\r\n" + headers + b"\r\n"
    events = RequestReader().feed(data)
    assert kinds(events) == [HEAD, END]
    assert events[0][1].version == version.decode()
    assert events[0][1].keep_alive is keep


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/0.9\r\nHost: a\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
        b"GET / HTTP/3.0\r\nHost: a\r\n\r\n",
    ],
)
def test_unsupported_versions_get_505(data):
    assert request_error(data).status == 505


# -- malformed requests ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"GET /a b HTTP/1.1\r\n\r\n", id="space-in-target"),
        pytest.param(b"G@T / HTTP/1.1\r\n\r\n", id="bad-method"),
        pytest.param(b"GET / FOO/1.1\r\n\r\n", id="bad-protocol"),
        pytest.param(b"GET / HTTP/11.1\r\n\r\n", id="bad-version-digits"),
        pytest.param(b"GET / HTTP/1.1 \r\n\r\n", id="space-after-version"),
        pytest.param(b"GET / HTTP/1.1\rHost: a\r\n\r\n", id="bare-cr-after-version"),
        pytest.param(b"GET / HTTP/1.1\nHost: a\n\n", id="bare-lf-line-ends"),
        pytest.param(b"GET / HTTP/1.1\r\nHost a\r\n\r\n", id="no-colon"),
        pytest.param(b"GET / HTTP/1.1\r\n: a\r\n\r\n", id="empty-name"),
        pytest.param(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", id="space-before-colon"),
        pytest.param(b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", id="tab-before-colon"),
        pytest.param(b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", id="obs-fold"),
        pytest.param(b"GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n", id="obs-fold-tab"),
        pytest.param(b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", id="bare-cr-in-value"),
        pytest.param(b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", id="nul-in-value"),
        pytest.param(b"GET / HTTP/1.1\r\nX\x00: a\r\n\r\n", id="nul-in-name"),
        pytest.param(b"GET /\x00 HTTP/1.1\r\n\r\n", id="nul-in-target"),
        pytest.param(b"GET / HTTP/1.1\r\nX: \x01\r\n\r\n", id="control-in-value"),
        pytest.param(b"GET / HTTP/1.1\r\nX: a\nY: b\r\n\r\n", id="bare-lf-in-head"),
        pytest.param(b"\x16\x03\x01\x00\xa5\x01\x00\x00", id="tls-to-a-plain-port"),
    ],
)
def test_malformed_request_heads_get_400(data):
    err = request_error(data)
    assert err.status == 400
    assert "malformed request" in err.message


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param(b"Content-Length: 5\r\nContent-Length: 6\r\n", id="conflicting"),
        pytest.param(b"Content-Length: 5\r\nContent-Length: 5\r\n", id="duplicate-equal"),
        pytest.param(b"Content-Length: 5, 5\r\n", id="list"),
        pytest.param(b"Content-Length: -1\r\n", id="negative"),
        pytest.param(b"Content-Length: +5\r\n", id="plus"),
        pytest.param(b"Content-Length: 0x5\r\n", id="hex"),
        pytest.param(b"Content-Length: 5 5\r\n", id="two-numbers"),
        pytest.param(b"Content-Length: 99999999999999999999999\r\n", id="overflow"),
        pytest.param(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", id="cl-then-te"),
        pytest.param(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", id="te-then-cl"),
        pytest.param(b"Transfer-Encoding: chunked, chunked\r\n", id="chunked-twice"),
        pytest.param(
            b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", id="two-te-fields"
        ),
        pytest.param(b"Transfer-Encoding: gzip\r\n", id="te-gzip"),
        pytest.param(b"Transfer-Encoding: identity\r\n", id="te-identity"),
        pytest.param(b"Transfer-Encoding: chunked, gzip\r\n", id="chunked-not-final"),
        pytest.param(b"Transfer-Encoding: \r\n", id="te-empty"),
    ],
)
def test_ambiguous_framing_gets_400_before_any_head(fields):
    data = b"POST / HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n5\r\nhello\r\n0\r\n\r\n"
    assert request_error(data).status == 400


@pytest.mark.parametrize("codings", [b"gzip, chunked", b"deflate,chunked"])
def test_transfer_codings_other_than_chunked_get_501(codings):
    # relaying would strip the coding with the hop-by-hop Transfer-Encoding field
    data = b"POST / HTTP/1.1\r\nTransfer-Encoding: " + codings + b"\r\n\r\n0\r\n\r\n"
    assert request_error(data).status == 501


def test_a_dead_reader_reads_no_more():
    r = RequestReader()
    assert kinds(r.feed(b"GET / HTTP/1.1\r\nX : y\r\n\r\n")) == [ERROR]
    assert r.feed(GET) == []
    assert r.feed(GET) == []


def test_error_after_a_good_pipelined_request_keeps_the_good_one():
    events = RequestReader().feed(GET + b"GET / HTTP/1.1\r\nX: \x00\r\n\r\n")
    assert kinds(events) == [HEAD, END, ERROR]
    assert events[2][1].status == 400


# -- limits ----------------------------------------------------------------------------------


def _head_with(n_headers: int, value: bytes = b"v") -> bytes:
    fields = b"".join(b"X-%d: %s\r\n" % (i, value) for i in range(n_headers))
    return b"GET / HTTP/1.1\r\n" + fields + b"\r\n"


def test_header_block_over_max_head_size_gets_431():
    assert request_error(_head_with(1, b"a" * 2000), max_head_size=1000).status == 431


def test_header_block_under_max_head_size_is_fine():
    events = RequestReader(max_head_size=1000).feed(_head_with(1, b"a" * 900))
    assert kinds(events) == [HEAD, END]


@pytest.mark.parametrize(
    "start, filler",
    [
        pytest.param(b"GET / HTTP/1.1\r\nX: ", b"a" * 100, id="one-value-never-ends"),
        pytest.param(b"GET / HTTP/1.1\r\n", b"a" * 100, id="one-name-never-ends"),
        pytest.param(b"GET /", b"a" * 100, id="target-never-ends"),
        pytest.param(b"GET / HTTP/1.1\r\n", b"X-Y: zzzzzzzzzzzz\r\n", id="fields-never-end"),
    ],
)
@pytest.mark.parametrize("piece", [1, 7, 100])
def test_a_head_that_never_ends_gets_431(start, filler, piece):
    # httptools buffers a field until the next one starts: the reader must still bound it
    r = RequestReader(max_head_size=1000, max_target=100000)
    stream = start + filler * (3000 // len(filler))
    events = r.feed(stream[:piece])
    for i in range(piece, len(stream), piece):
        events += r.feed(stream[i : i + piece])
        if events:
            break
    assert error_of(events).status == 431
    # bounded: noticed within one read of the limit
    assert i <= 1000 + len(start) + piece


def test_a_slow_but_small_head_is_fine():
    events = feed(RequestReader(max_head_size=200), *bytewise(_head_with(5)))
    assert kinds(events) == [HEAD, END]


def test_too_many_headers_gets_431():
    assert request_error(_head_with(4), max_headers=3).status == 431


def test_max_headers_is_inclusive():
    assert kinds(RequestReader(max_headers=3).feed(_head_with(3))) == [HEAD, END]


def test_long_target_gets_414():
    data = b"GET /" + b"a" * 200 + b" HTTP/1.1\r\n\r\n"
    assert request_error(data, max_target=100).status == 414


def test_target_at_the_limit_is_fine():
    data = b"GET /" + b"a" * 99 + b" HTTP/1.1\r\n\r\n"
    events = RequestReader(max_target=100).feed(data)
    assert kinds(events) == [HEAD, END]


def test_limits_apply_to_each_pipelined_request_separately():
    one = _head_with(3, b"a" * 200)  # ~630 bytes of fields
    events = RequestReader(max_head_size=1000).feed(one * 5)
    assert kinds(events) == [HEAD, END] * 5


# -- responses -------------------------------------------------------------------------------

OK_CL = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
OK_CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n1;ext\r\n!\r\n0\r\nX-Trailer: yes\r\nX-Other: 1\r\n\r\n"
)


def test_simple_response():
    r = ResponseReader()
    assert r.started is False
    events = r.feed(OK_CL)
    assert norm(events) == [
        (
            "HEAD",
            200,
            b"OK",
            "1.1",
            ((b"Content-Type", b"text/plain"), (b"Content-Length", b"5")),
            True,
            "length",
            5,
        ),
        ("BODY", b"hello"),
        ("END",),
    ]
    assert r.started and r.done and not r.extra
    assert r.body_kind == "length"
    assert r.eof() == []


def test_an_empty_feed_is_not_extra():
    r = ResponseReader()
    r.feed(OK_CL)
    assert r.feed(b"") == []
    assert r.done and not r.extra


def test_response_not_done_before_its_end():
    r = ResponseReader()
    r.feed(OK_CL[:-1])
    assert r.started and not r.done
    assert norm(r.feed(OK_CL[-1:])) == [("BODY", b"o"), ("END",)]
    assert r.done


@pytest.mark.parametrize("cut", range(len(OK_CHUNKED) + 1))
def test_chunked_response_split_at_every_offset(cut):
    r = ResponseReader()
    events = norm(feed(r, OK_CHUNKED[:cut], OK_CHUNKED[cut:]))
    assert events[0][6] == "chunked"
    assert events[0][4] == ((b"Transfer-Encoding", b"chunked"),)  # trailers dropped
    assert events[1:] == [("BODY", b"hello!"), ("END",)]
    assert r.done and not r.extra


def test_reason_phrase_split_and_empty():
    r = ResponseReader()
    events = feed(r, *bytewise(b"HTTP/1.1 404 Not Found Here\r\nContent-Length: 0\r\n\r\n"))
    assert events[0][1].reason == b"Not Found Here"
    events = ResponseReader().feed(b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n")
    assert events[0][1].reason == b""


@pytest.mark.parametrize("status", [100, 102, 103])
def test_interim_then_final_response(status):
    data = (
        b"HTTP/1.1 %d Whatever\r\nLink: </s.css>; rel=preload\r\n\r\n" % status
        + b"HTTP/1.1 100 Continue\r\n\r\n"
        + OK_CL
    )
    for chunks in ([data], bytewise(data)):
        r = ResponseReader()
        events = norm(feed(r, *chunks))
        assert events[0] == (
            "INTERIM",
            status,
            b"Whatever",
            "1.1",
            ((b"Link", b"</s.css>; rel=preload"),),
            True,
            "none",
            None,
        )
        assert events[1][:2] == ("INTERIM", 100)
        assert [e[0] for e in events[2:]] == ["HEAD", "BODY", "END"]
        assert r.done


def test_interim_response_alone_is_not_done():
    r = ResponseReader()
    assert kinds(r.feed(b"HTTP/1.1 100 Continue\r\n\r\n")) == [INTERIM]
    assert not r.done and r.body_kind == ""
    assert error_of(r.eof()).status == 502


SWITCHED = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


@pytest.mark.parametrize("split", [False, True])
def test_asked_101_ends_http_and_the_rest_is_raw(split):
    r = ResponseReader()
    data = SWITCHED + b"\x81\x02hi"
    events = feed(r, *(bytewise(data) if split else [data]))
    assert kinds(events)[:2] == [HEAD, END]
    assert events[0][1].status == 101 and events[0][1].body == "none"
    assert b"".join(p for k, p in events if k == REST) == b"\x81\x02hi"
    assert r.switched and r.done and not r.keep_alive
    assert r.feed(b"more") == [(REST, b"more")]
    assert r.eof() == []


@pytest.mark.parametrize("split", [False, True])
def test_asked_101_to_head_ends_http_and_the_rest_is_raw(split):
    # a HEAD's heads are cut out by hand: llhttp's upgrade stop must not escape from there
    r = ResponseReader(b"HEAD")
    data = SWITCHED + b"\x81\x02hi"
    events = feed(r, *(bytewise(data) if split else [data]))
    assert kinds(events)[:2] == [HEAD, END] and events[0][1].status == 101
    assert b"".join(p for k, p in events if k == REST) == b"\x81\x02hi"
    assert r.switched and r.done and not r.keep_alive and not r.extra
    assert r.feed(b"more") == [(REST, b"more")]


@pytest.mark.parametrize(
    "head", [b"HTTP/1.1 101 S\r\nUpgrade: websocket\r\n\r\n", b"HTTP/1.1 101 S\r\n\r\n"]
)
def test_asked_101_without_upgrade_and_connection_is_an_error(head):
    r = ResponseReader()
    assert error_of(r.feed(head + b"x")).status == 502
    assert not r.switched


def test_interim_then_asked_101():
    r = ResponseReader()
    events = r.feed(b"HTTP/1.1 100 Continue\r\n\r\n" + SWITCHED)
    assert kinds(events) == [INTERIM, HEAD, END, REST]


def test_other_answer_to_an_upgrade_is_ordinary():
    r = ResponseReader()
    events = r.feed(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 2\r\n\r\nnoGET")
    assert kinds(events) == [HEAD, BODY, END]
    assert not r.switched and r.extra


def test_a_101_is_reported_and_whether_it_was_asked_for_is_the_handlers():
    # fwproxy.response answers 502 to a 101 nobody asked for; fwproxy.upgrade splices one
    events = ResponseReader().feed(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nxx"
    )
    assert kinds(events) == [HEAD, END, REST] and events[0][1].status == 101


@pytest.mark.parametrize("status", [204, 304])
@pytest.mark.parametrize("length", [b"", b"Content-Length: 5\r\n"])
def test_bodiless_statuses(status, length):
    data = b"HTTP/1.1 %d X\r\n" % status + length + b"\r\n"
    r = ResponseReader()
    events = norm(r.feed(data))
    assert [e[0] for e in events] == ["HEAD", "END"]
    assert events[0][6] == "none"
    assert r.done and not r.extra
    # the connection is still good: what follows is not this response's body
    r.feed(b"hello")
    assert r.extra


HEAD_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5000\r\n\r\n"


def test_response_to_head_with_content_length():
    r = ResponseReader(b"HEAD")
    events = norm(r.feed(HEAD_RESPONSE))
    assert events == [
        (
            "HEAD",
            200,
            b"OK",
            "1.1",
            ((b"Content-Type", b"text/html"), (b"Content-Length", b"5000")),
            True,
            "none",
            5000,
        ),
        ("END",),
    ]
    assert r.done and not r.extra
    assert r.eof() == []


@pytest.mark.parametrize(
    "head",
    [
        HEAD_RESPONSE,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n" + HEAD_RESPONSE,
    ],
)
def test_response_to_head_byte_by_byte(head):
    r = ResponseReader(b"HEAD")
    events = norm(feed(r, *bytewise(head)))
    assert [e[0] for e in events if e[0] != "INTERIM"] == ["HEAD", "END"]
    assert events[-2][6] == "none"
    assert r.done and not r.extra


def test_response_to_head_does_not_swallow_the_next_response():
    # one upstream connection: GET (chunked), HEAD (announcing 5000 bytes), GET: each
    # exchange's reader must stop exactly at its response's end
    r1 = ResponseReader(b"GET")
    assert kinds(r1.feed(OK_CHUNKED))[-1] == END
    r2 = ResponseReader(b"HEAD")
    assert kinds(r2.feed(HEAD_RESPONSE)) == [HEAD, END]
    r3 = ResponseReader(b"GET")
    assert norm(r3.feed(OK_CL))[1:] == [("BODY", b"hello"), ("END",)]
    for r in (r1, r2, r3):
        assert r.done and not r.extra


def test_bytes_after_a_head_response_are_extra_not_body():
    r = ResponseReader(b"HEAD")
    events = r.feed(HEAD_RESPONSE + OK_CL)
    assert kinds(events) == [HEAD, END]
    assert r.extra
    r = ResponseReader(b"HEAD")
    r.feed(HEAD_RESPONSE)
    assert r.feed(OK_CL) == [] and r.extra


def test_response_to_head_that_never_ends_is_an_error():
    r = ResponseReader(b"HEAD", max_head_size=500)
    events = r.feed(b"HTTP/1.1 200 OK\r\n")
    for _ in range(20):
        events += r.feed(b"X-Filler: " + b"a" * 40 + b"\r\n")
    assert error_of(events).status == 502


def test_malformed_response_to_head():
    events = ResponseReader(b"HEAD").feed(b"HTTP/1.1 200 OK\r\nX : y\r\n\r\n")
    assert error_of(events).status == 502


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\n\r\nthe body, ",
        b"HTTP/1.0 200 OK\r\n\r\nthe body, ",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nthe body, ",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nthe body, ",
    ],
)
def test_close_delimited_body_is_ended_by_eof(data):
    r = ResponseReader()
    events = norm(feed(r, data, b"to the end"))
    assert events[0][6] == "close"
    assert events[0][5] is False  # keep_alive
    assert events[1:] == [("BODY", b"the body, to the end")]
    assert not r.done
    assert norm(r.eof()) == [("END",)]
    assert r.done
    assert r.eof() == []


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="nothing"),
        pytest.param(b"HTTP/1.1 200 O", id="in-status-line"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n", id="in-head"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", id="short-length"),
        pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", id="no-chunks"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            id="no-last-chunk",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX: 1\r\n",
            id="in-trailers",
        ),
    ],
)
def test_truncation_is_reported_by_eof(data):
    r = ResponseReader()
    before = r.feed(data)
    assert ERROR not in kinds(before) and END not in kinds(before)
    assert error_of(r.eof()).status == 502
    assert not r.done
    assert r.eof() == []  # reported once


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param([OK_CL + OK_CL], id="a-second-response"),
        pytest.param([OK_CL, b"X"], id="a-later-byte"),
        pytest.param([OK_CL + b"GARBAGE"], id="garbage"),
        pytest.param(
            [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhiX"],
            id="after-connection-close",
        ),
        pytest.param([OK_CHUNKED + b"more"], id="after-chunked"),
    ],
)
def test_bytes_after_the_response_set_extra(chunks):
    r = ResponseReader()
    events = feed(r, *chunks)
    assert kinds(events)[-1] == END
    assert kinds(events).count(HEAD) == 1 and ERROR not in kinds(events)
    assert r.done and r.extra


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"HTTP/2.0 200 OK\r\n\r\n", id="http2"),
        pytest.param(b"HTTP/0.9 200 OK\r\n\r\n", id="http09"),
        pytest.param(b"ICY 200 OK\r\n\r\n", id="icy"),
        pytest.param(b"HTTP/1.1 2000 OK\r\n\r\n", id="long-status"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX : y\r\n\r\n", id="space-before-colon"),
        pytest.param(b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", id="bare-lf"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", id="two-cl"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            id="cl-and-te",
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", id="obs-fold"),
    ],
)
def test_malformed_responses_get_502(data):
    r = ResponseReader()
    events = r.feed(data)
    assert HEAD not in kinds(events)
    assert error_of(events).status == 502
    assert r.feed(OK_CL) == []
    assert r.eof() == []


def test_response_head_over_max_head_size():
    data = b"HTTP/1.1 200 OK\r\nX: " + b"a" * 600 + b"\r\nContent-Length: 0\r\n\r\n"
    assert error_of(ResponseReader(max_head_size=500).feed(data)).status == 502


@pytest.mark.parametrize("piece", [1, 50])
def test_response_head_that_never_ends(piece):
    r = ResponseReader(max_head_size=500)
    events = r.feed(b"HTTP/1.1 200 OK\r\nX: ")
    for _ in range(2000 // piece):
        events += r.feed(b"a" * piece)
    assert error_of(events).status == 502


def test_response_with_a_final_coding_other_than_chunked_is_close_delimited():
    r = ResponseReader()
    events = norm(r.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b"))
    assert events[0][6] == "close"
    assert r.eof() == [(END, None)]


# -- hop-by-hop fields -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, tokens",
    [
        ([], set()),
        ([(b"Connection", b"close")], {b"close"}),
        ([(b"connection", b"Keep-Alive, X-Foo")], {b"keep-alive", b"x-foo"}),
        ([(b"CONNECTION", b" x-a ,, x-b ,")], {b"x-a", b"x-b"}),
        ([(b"Connection", b"x-a"), (b"Host", b"h"), (b"Connection", b"X-B")], {b"x-a", b"x-b"}),
        ([(b"Connection", b"")], set()),
        ([(b"Connections", b"x-a"), (b"X-Connection", b"x-b")], set()),
    ],
)
def test_connection_tokens(fields, tokens):
    assert connection_tokens(fields) == frozenset(tokens)


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
@pytest.mark.parametrize("case", [bytes.lower, bytes.upper, bytes.title])
def test_end_to_end_drops_every_hop_by_hop_field(name, case):
    fields = [(b"A", b"1"), (case(name), b"x"), (b"B", b"2")]
    assert end_to_end(fields) == [(b"A", b"1"), (b"B", b"2")]


def test_hop_by_hop_set_is_complete():
    assert HOP_BY_HOP >= {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }


def test_end_to_end_drops_fields_named_by_connection_and_keeps_order_and_repeats():
    fields = [
        (b"Set-Cookie", b"a=1"),
        (b"X-Private", b"p1"),
        (b"Connection", b"x-private, X-Other"),
        (b"Set-Cookie", b"b=2"),
        (b"x-other", b"o"),
        (b"Via", b"1.1 a"),
        (b"X-PRIVATE", b"p2"),
        (b"Via", b"1.1 b"),
        (b"Set-Cookie", b"a=1"),
    ]
    original = list(fields)
    assert end_to_end(fields) == [
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"Via", b"1.1 a"),
        (b"Via", b"1.1 b"),
        (b"Set-Cookie", b"a=1"),
    ]
    assert fields == original  # not modified in place


def test_connection_cannot_name_content_length_away():
    fields = [(b"Connection", b"Content-Length, X-A"), (b"X-A", b"1"), (b"Content-Length", b"5")]
    assert end_to_end(fields) == [(b"Content-Length", b"5")]


def test_end_to_end_keeps_fields_only_resembling_hop_by_hop_ones():
    fields = [(b"TE-X", b"1"), (b"Upgrade-Insecure-Requests", b"1"), (b"Keep", b"1")]
    assert end_to_end(fields) == fields


# -- serialising -----------------------------------------------------------------------------


def test_request_head_bytes():
    data = request_head(b"GET", b"/p?q=1", [(b"Host", b"a"), (b"X-Dup", b"1"), (b"X-Dup", b"2")])
    assert data == b"GET /p?q=1 HTTP/1.1\r\nHost: a\r\nX-Dup: 1\r\nX-Dup: 2\r\n\r\n"


def test_request_head_without_fields():
    assert request_head(b"OPTIONS", b"*", []) == b"OPTIONS * HTTP/1.1\r\n\r\n"


@pytest.mark.parametrize(
    "status, reason, expected",
    [
        (200, b"OK", b"HTTP/1.1 200 OK\r\n"),
        (404, b"Not Found", b"HTTP/1.1 404 Not Found\r\n"),
        (599, b"", b"HTTP/1.1 599 \r\n"),
    ],
)
def test_response_head_bytes(status, reason, expected):
    assert response_head(status, reason, [(b"A", b"b")]) == expected + b"A: b\r\n\r\n"


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"hello", [b"5\r\n", b"hello", b"\r\n"]),
        (b"x" * 255, [b"ff\r\n", b"x" * 255, b"\r\n"]),
        (b"x" * 4096, [b"1000\r\n", b"x" * 4096, b"\r\n"]),
    ],
)
def test_chunk(data, expected):
    assert chunk(data) == expected


def test_last_chunk():
    assert LAST_CHUNK == b"0\r\n\r\n"


def test_serialised_heads_parse_back():
    fields = [(b"Host", b"example.com"), (b"X-A", b"1"), (b"x-a", b"2"), (b"Content-Length", b"2")]
    events = RequestReader().feed(request_head(b"PUT", b"/x", fields) + b"hi")
    assert norm(events) == [
        ("HEAD", b"PUT", b"/x", "1.1", tuple(fields), True, False, 2),
        ("BODY", b"hi"),
        ("END",),
    ]
    events = ResponseReader().feed(response_head(201, b"Created", fields) + b"hi")
    assert norm(events)[0] == ("HEAD", 201, b"Created", "1.1", tuple(fields), True, "length", 2)


def test_protocol_error_carries_status_and_message():
    e = ProtocolError(431, "too big")
    assert (e.status, e.message, str(e)) == (431, "too big", "too big")
