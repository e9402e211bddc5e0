"""The sans-IO ClientHello parser (fwproxy.clienthello): real hellos from Python's ssl on memory
BIOs, crafted ones (GREASE, ECH, broken fields), splits over records and reads, and hypothesis."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.tlshello import (
    ECH,
    GREASE,
    add_extension,
    alpn_extension,
    crafted_hello,
    extension,
    hello_message,
    real_hello,
    record,
    reframe,
    sni_extension,
)

from fwproxy.clienthello import (
    MAX_HELLO,
    MAX_RECORDS,
    ClientHello,
    ClientHelloParser,
    HelloError,
    MalformedHello,
    NotTLS,
    is_grease,
)

REAL = real_hello("www.Example.com", ["h2", "http/1.1"])


def parse(data: bytes) -> ClientHello | None:
    return ClientHelloParser().feed(data)


def malformed(data: bytes) -> str:
    with pytest.raises(MalformedHello) as e:
        parse(data)
    return str(e.value)


# -- real hellos ----------------------------------------------------------------------------


def test_a_real_hello() -> None:
    hello = parse(REAL)
    assert hello is not None
    assert hello.sni == "www.example.com"  # lower-cased
    assert hello.alpn == (b"h2", b"http/1.1")
    assert hello.ech is False
    assert hello.version == 0x0303
    assert 0 in hello.extensions and 16 in hello.extensions


def test_a_real_hello_without_server_name() -> None:
    hello = parse(real_hello(None))
    assert hello is not None and hello.sni is None and hello.alpn == ()


def test_every_split_in_two_reads_parses_the_same() -> None:
    whole = parse(REAL)
    for i in range(1, len(REAL)):
        p = ClientHelloParser()
        assert p.feed(REAL[:i]) is None, i
        assert p.feed(REAL[i:]) == whole, i


def test_byte_by_byte_needs_more_until_the_last_byte() -> None:
    p = ClientHelloParser()
    for b in REAL[:-1]:
        assert p.feed(bytes([b])) is None
    assert p.feed(REAL[-1:]) == parse(REAL)


def test_split_over_several_records() -> None:
    whole = parse(REAL)
    for sizes in ([1], [3, 1, 2], [100, 100, 100], [4], [len(REAL) - 10]):
        again = reframe(REAL, sizes)
        assert again != REAL
        assert parse(again) == whole, sizes
        p = ClientHelloParser()  # and across reads
        results = [p.feed(again[i : i + 7]) for i in range(0, len(again), 7)]
        assert results[-1] == whole and all(r is None for r in results[:-1])


def test_bytes_after_the_hello_are_left_alone() -> None:
    hello = parse(REAL + record(b"\x01\x00", content_type=0x14) + b"\x17\x03\x03")
    assert hello == parse(REAL)


def test_answers_stay_the_same_after_the_end() -> None:
    p = ClientHelloParser()
    hello = p.feed(REAL)
    assert p.feed(b"GET / HTTP/1.1\r\n") is hello


# -- GREASE, ALPN and ECH ---------------------------------------------------------------------


def test_grease_values_are_skipped() -> None:
    hello = parse(crafted_hello("a.test", [b"http/1.1"], grease=True))
    assert hello is not None
    assert hello.sni == "a.test"
    assert hello.alpn == (b"http/1.1",)  # the GREASE ALPN value is left out
    assert hello.extensions == (0, 16)
    assert all(is_grease(g) for g in GREASE)
    assert not any(is_grease(v) for v in (0x0A0B, 0x1A0A, 0x0303, 0xFE0D, 0))


def test_ech_is_flagged() -> None:
    hello = parse(crafted_hello("public.example", ech=True, grease=True))
    assert hello is not None and hello.ech and hello.sni == "public.example"
    real = parse(add_extension(REAL, ECH, b"\x00\x00\x01\x00\x01\x07\x00\x00\x00\x00"))
    assert real is not None and real.ech and real.sni == "www.example.com"
    assert parse(crafted_hello("a.test")).ech is False  # type: ignore[union-attr]


def test_a_tls_1_2_hello_without_extensions() -> None:
    hello = parse(record(hello_message(with_extensions=False)))
    assert hello == ClientHello(None, (), False, 0x0303, ())


# -- not TLS ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"\x80\x2e\x01\x00\x02",  # an SSLv2-compatible hello
        b"\x16\x02\x00",
        b"\x17\x03\x03\x00\x10",
        b"\x00",
    ],
)
def test_not_tls(data: bytes) -> None:
    with pytest.raises(NotTLS):
        parse(data)


def test_one_handshake_byte_needs_more() -> None:
    p = ClientHelloParser()
    assert p.feed(b"\x16") is None
    assert p.feed(b"\x03") is None
    with pytest.raises(NotTLS):
        ClientHelloParser().feed(b"\x16\x04")


# -- malformed ---------------------------------------------------------------------------------


def exts_hello(*exts: bytes) -> bytes:
    return record(hello_message(list(exts)))


def test_not_a_client_hello() -> None:
    assert "type 2" in malformed(record(b"\x02\x00\x00\x00"))


def test_another_record_type_inside_the_hello() -> None:
    first = reframe(REAL, [10])
    cut = 5 + 10
    broken = first[:cut] + b"\x17" + first[cut + 1 :]
    assert "record of type 23" in malformed(broken)


def test_record_bounds() -> None:
    assert "0 bytes" in malformed(b"\x16\x03\x01\x00\x00")
    # rejected from its header: the 16 KiB behind it are never waited for
    assert "16385 bytes" in malformed(b"\x16\x03\x01\x40\x01")


def test_a_hello_over_the_size_bound() -> None:
    big = MAX_HELLO - 4 + 1  # one byte over, header included
    msg = b"\x01" + big.to_bytes(3, "big")
    assert str(MAX_HELLO) in malformed(record(msg + b"\x00" * 100))
    # a hello within the bound, in records that carry more handshake bytes than the bound
    size = len(hello_message([extension(21, b"")]))
    hs = hello_message([extension(21, b"\x00" * (MAX_HELLO - 50 - size))])
    assert len(hs) == MAX_HELLO - 50
    assert parse(record(hs)) is not None
    cut = MAX_HELLO - 100
    assert parse(record(hs[:cut]) + record(hs[cut:])) is not None
    assert "more than" in malformed(record(hs[:cut]) + record(hs[cut:] + b"\x00" * 51))


def test_at_most_so_many_records() -> None:
    assert parse(reframe(REAL, [1] * (MAX_RECORDS - 1))) is not None
    assert f"more than {MAX_RECORDS} records" in malformed(reframe(REAL, [1] * MAX_RECORDS))


@pytest.mark.parametrize(
    "body, problem",
    [
        (b"\x03\x03" + b"\x00" * 10, "inside its random"),
        (b"\x04\x03" + b"\x00" * 40, "not TLS"),
        (b"\x03\x03" + b"\x00" * 32 + b"\x21" + b"\x00" * 33, "longer than 32"),
        (b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x03\x13\x01\x00\x01\x00", "odd-length"),
        (b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x00\x01\x00", "empty cipher suites"),
        (b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x02\x13\x01\x00", "empty compression"),
        (
            b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x02\x13\x01\x01\x00\x00",
            "extensions length",
        ),
        (
            b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x02\x13\x01\x01\x00\x00\x00\x00",
            "after the extensions",
        ),
    ],
)
def test_broken_fields(body: bytes, problem: str) -> None:
    msg = b"\x01" + len(body).to_bytes(3, "big") + body
    assert problem in malformed(record(msg))


@pytest.mark.parametrize(
    "exts, problem",
    [
        ((sni_extension(b"a.test"), sni_extension(b"b.test")), "appears twice"),
        ((extension(0, b"\x00\x0c\x00\x00\x03a.b\x00\x00\x03c.d"),), "two host names"),
        ((sni_extension(b"a b.test"),), "not a DNS host name"),
        ((sni_extension(b"a.test."),), "not a DNS host name"),
        ((sni_extension(b"a..test"),), "empty label"),
        ((sni_extension(b"\xffx.test"),), "not a DNS host name"),
        ((sni_extension(b"a" * 254),), "not a DNS host name"),
        ((extension(0, b"\x00\x00"),), "empty server name list"),
        ((extension(0, b"\x00\x03\x00\x00\x00"),), "empty server name"),
        ((extension(0, b"\x00\x05\x01\x00\x02ab"),), "without a host name"),
        ((extension(0, b"\x00\x06\x00\x00\x04abc"),), "inside its server name"),
        ((alpn_extension([]),), "empty ALPN list"),
        ((extension(16, b"\x00\x01\x00"),), "empty ALPN protocol name"),
        ((extension(16, b"\x00\x03\x02h2\x00"),), "after the ALPN list"),
        ((b"\x00\x17\x00\x05\x00",), "inside its extension"),
    ],
)
def test_broken_extensions(exts: tuple[bytes, ...], problem: str) -> None:
    assert problem in malformed(exts_hello(*exts))


def test_errors_stay_after_the_first() -> None:
    p = ClientHelloParser()
    with pytest.raises(NotTLS):
        p.feed(b"GET ")
    with pytest.raises(NotTLS):
        p.feed(REAL)


# -- hypothesis --------------------------------------------------------------------------------

names = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}\Z")
protocols = st.lists(st.binary(min_size=1, max_size=20), max_size=4)


def feed_all(chunks: list[bytes]) -> ClientHello | None:
    p = ClientHelloParser()
    out = None
    for c in chunks:
        out = p.feed(c)
    return out


def chunks_of(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sni=st.none() | names,
    alpn=protocols,
    ech=st.booleans(),
    grease=st.booleans(),
    records=st.lists(st.integers(1, 300), max_size=6),
    cuts=st.lists(st.integers(0, 5000), max_size=10),
)
def test_any_split_of_a_valid_hello_parses_the_same(
    sni: str | None,
    alpn: list[bytes],
    ech: bool,
    grease: bool,
    records: list[int],
    cuts: list[int],
) -> None:
    alpn = [p for p in alpn if not (len(p) == 2 and is_grease(int.from_bytes(p, "big")))]
    data = reframe(crafted_hello(sni, alpn, ech, grease), records)
    hello = feed_all(chunks_of(data, cuts))
    assert hello is not None
    assert (hello.sni, hello.alpn, hello.ech) == (sni, tuple(alpn), ech)


def outcome(chunks: list[bytes]) -> object:
    try:
        return feed_all(chunks)
    except HelloError as e:
        return type(e)


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=8))
def test_random_bytes_raise_only_hello_errors(data: bytes, cuts: list[int]) -> None:
    whole = outcome([data])
    assert whole in (None, NotTLS, MalformedHello) or isinstance(whole, ClientHello)
    assert outcome(chunks_of(data, cuts)) == whole


@settings(max_examples=500, deadline=None)
@given(
    flips=st.lists(st.tuples(st.integers(0, len(REAL) - 1), st.integers(0, 255)), max_size=6),
    cuts=st.lists(st.integers(0, 600), max_size=8),
)
def test_mutated_real_hellos_raise_only_hello_errors_and_splits_agree(
    flips: list[tuple[int, int]], cuts: list[int]
) -> None:
    data = bytearray(REAL)
    for i, b in flips:
        data[i] = b
    whole = outcome([bytes(data)])
    assert whole in (None, NotTLS, MalformedHello) or isinstance(whole, ClientHello)
    assert outcome(chunks_of(bytes(data), cuts)) == whole


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=300),
    version=st.sampled_from([0x0301, 0x0303]),
)
def test_any_hello_body_raises_only_malformed(body: bytes, version: int) -> None:
    msg = b"\x01" + len(body).to_bytes(3, "big") + body
    result = outcome([struct.pack("!BHH", 0x16, version, len(msg)) + msg])
    assert result is MalformedHello or isinstance(result, ClientHello)
