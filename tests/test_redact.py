"""The built-in ``redact`` body filter: options, redaction across chunk boundaries (hypothesis
over chunkings), which bodies it takes, and its configuration errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from zope.interface.verify import verifyObject

from fwproxy.filters.redact import RedactFactory, RedactFilter, Redaction, RedactSpec, Refusal
from fwproxy.interfaces import IBodyTransform, IRequestBodyFilter, IResponseBodyFilter
from fwproxy.message import Headers, Request, Response
from fwproxy.plugins import find_factory

ROOT = Path(__file__).resolve().parents[1]


def spec(**options: Any) -> RedactSpec:
    return RedactSpec.from_options({"patterns": ["secret"], **options})


def run(s: RedactSpec, chunks: list[bytes]) -> bytes:
    r = Redaction(s)
    return b"".join([r.data(c) for c in chunks if c] + [r.end()])


def splits(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(body) + 1) for c in cuts} | {0, len(body)})
    return [body[a:b] for a, b in zip(points, points[1:], strict=False)]


def test_found_by_name_and_provides_the_interfaces() -> None:
    assert find_factory("redact") is RedactFactory
    f = RedactFactory.build({"patterns": ["x"]}, None)  # type: ignore[arg-type]
    assert verifyObject(IRequestBodyFilter, f) and verifyObject(IResponseBodyFilter, f)
    assert verifyObject(IBodyTransform, Redaction(f.spec))


def test_a_match_split_over_chunks_is_redacted() -> None:
    s = spec()
    assert run(s, [b"my se", b"cr", b"et and your secret"]) == b"my [REDACTED] and your [REDACTED]"
    assert run(spec(mask="*"), [b"a sec", b"ret"]) == b"a ******"


def test_at_most_max_match_bytes_are_held_back() -> None:
    r = Redaction(spec(max_match=8))
    out = r.data(b"x" * 100)
    assert out == b"x" * 92
    assert r.data(b"y" * 3) == b"xxx"
    assert r.end() == b"xxxxxyyy"


def test_mask_keeps_the_length_and_replacement_does_not() -> None:
    assert Redaction(spec(mask="#")).keeps_length
    assert not Redaction(spec()).keeps_length


def test_several_patterns_and_lookbehind_across_a_boundary() -> None:
    s = spec(patterns=[r"\b\d{4}-\d{4}\b", "(?<=key=)[a-z]+"], replacement="?")
    body = b"card 1234-5678, key=abc; 91234-5678 key:x"
    expected = re.sub(s.pattern, b"?", body)
    assert expected == b"card ?, key=?; 91234-5678 key:x"
    for cut in range(len(body) + 1):
        assert run(s, [body[:cut], body[cut:]]) == expected


PATTERNS = [
    ["secret"],
    [r"\d{3}-\d{2}"],
    ["ab|abc", "ca"],
    [r"\bcat\b"],
    ["(?<=x)yz", "a[bc]{1,4}"],
]


@given(
    st.sampled_from(PATTERNS),
    st.lists(
        st.sampled_from([b"a", b"b", b"c", b"x", b"yz", b"cat", b" ", b"1", b"-", b"secret"])
    ).map(b"".join),
    st.lists(st.integers(min_value=0, max_value=500), max_size=30),
    st.sampled_from([None, "#"]),
)
def test_any_chunking_redacts_as_one_substitution(
    patterns: list[str], body: bytes, cuts: list[int], mask: str | None
) -> None:
    options: dict[str, Any] = {"patterns": patterns, "max_match": 16}
    if mask:
        options["mask"] = mask
    s = RedactSpec.from_options(options)
    whole = run(s, [body])
    assert run(s, splits(body, cuts)) == whole
    assert run(s, [bytes([b]) for b in body]) == whole
    if mask:
        assert whole == s.pattern.sub(lambda m: b"#" * len(m.group()), body)
    else:
        assert whole == s.pattern.sub(b"[REDACTED]", body)


def test_which_bodies_are_taken() -> None:
    f = RedactFilter(spec(requests=True, content_types=["text/", "application/json"]))
    req = Request("POST", "http://a/", "a", 80, b"/", Headers([(b"Content-Type", b"text/plain")]))
    assert isinstance(f.requestBody(req), Redaction)
    resp = Response(200, headers=[(b"Content-Type", b"Application/JSON; charset=utf-8")])
    assert isinstance(f.responseBody(req, resp), Redaction)
    assert f.responseBody(req, Response(200, headers=[(b"Content-Type", b"image/png")])) is None
    gz = Response(200, headers=[(b"Content-Type", b"text/html"), (b"Content-Encoding", b"gzip")])
    refusal = f.responseBody(req, gz)  # compressed bytes no pattern can match: refused
    assert isinstance(refusal, Refusal)
    assert isinstance(refusal.data(b"\x1f\x8b"), Response) and refusal.data(b"").status == 502
    passing = RedactFilter(spec(content_types=["text/"], encoded="pass"))
    assert passing.responseBody(req, gz) is None
    off = RedactFilter(spec())
    assert off.requestBody(req) is None  # responses only by default
    assert isinstance(off.responseBody(req, Response(200)), Redaction)


def test_compressed_request_bodies_are_refused_and_responses_asked_uncompressed() -> None:
    f = RedactFilter(spec(requests=True))
    headers = Headers([(b"Content-Encoding", b"gzip"), (b"Accept-Encoding", b"gzip, br")])
    req = Request("POST", "http://a/", "a", 80, b"/", headers)
    refusal = f.requestBody(req)
    assert isinstance(refusal, Refusal) and refusal.end().status == 415
    refused = f.requestReceived(req)  # on its head: nothing of it goes upstream
    assert isinstance(refused, Response) and refused.status == 415
    # a client asking for gzip would get responses past the patterns
    assert req.headers.get_all(b"accept-encoding") == [b"identity"]
    plain = Request("POST", "http://a/", "a", 80, b"/", Headers([(b"Accept-Encoding", b"br")]))
    assert f.requestReceived(plain) is None
    requests_only = RedactFilter(spec(requests=True, responses=False))
    req2 = Request("GET", "http://a/", "a", 80, b"/", Headers([(b"Accept-Encoding", b"gzip")]))
    requests_only.requestReceived(req2)
    assert req2.headers.get(b"accept-encoding") == b"gzip"  # responses not redacted: left


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "patterns: expected a list of one or more regular expressions"),
        ({"patterns": []}, "patterns: expected a list"),
        ({"patterns": ["ok", "("]}, "patterns[1]: '(' is not a regular expression"),
        ({"patterns": ["a*"]}, "patterns[0]: 'a*' matches the empty string"),
        ({"patterns": ["a"], "mask": "##"}, "mask: '##' must be one ASCII character"),
        ({"patterns": ["a"], "mask": "#", "replacement": "x"}, "mask: give either"),
        ({"patterns": ["a"], "max_match": 0}, "max_match: 0 must be an integer"),
        ({"patterns": ["a"], "max_match": True}, "max_match: True must be an integer"),
        ({"patterns": ["a"], "requests": "yes"}, "requests: expected true or false"),
        ({"patterns": ["a"], "content_types": "text/"}, "content_types: expected a list"),
        ({"patterns": ["a"], "colour": 1}, "colour: unknown key"),
        ({"patterns": ["a"], "encoded": "decode"}, "encoded: 'decode' must be one of refuse, pass"),
    ],
)
def test_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        RedactSpec.from_options(options)


def test_bad_option_is_one_config_error_line(tmp_path: Path) -> None:
    conf = tmp_path / "p.toml"
    conf.write_text(
        '[proxy]\nlisten = ["tcp:0:interface=127.0.0.1"]\n\n'
        '[[filters]]\nname = "redact"\noptions = { patterns = ["ok", "(["] }\n'
    )
    r = subprocess.run(
        [sys.executable, "-m", "fwproxy.cli", "check-config", str(conf)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 1
    [line] = r.stderr.strip().splitlines()
    assert line.startswith(f"{conf}:4: filters[0]: patterns[1]: '([' is not a regular expression")
