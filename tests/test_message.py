"""Tests for :mod:`fwproxy.message`: the Headers, Request and Response values filters see."""

from __future__ import annotations

import pytest

from fwproxy.message import REASONS, Headers, Request, Response

# -- Headers ---------------------------------------------------------------------------------


def sample() -> Headers:
    return Headers(
        [
            ("Host", "example.com"),
            (b"Set-Cookie", b"a=1"),
            ("Accept", "*/*"),
            (b"set-cookie", b"b=2"),
        ]
    )


def test_headers_store_bytes_in_order():
    h = Headers([("Host", "example.com"), (b"X-B", b"\xff"), ("X-Caf\xe9", "\xe9t\xe9")])
    assert list(h) == [
        (b"Host", b"example.com"),
        (b"X-B", b"\xff"),
        (b"X-Caf\xe9", b"\xe9t\xe9"),
    ]
    assert len(h) == 3


def test_headers_reject_text_that_is_not_latin1():
    with pytest.raises(UnicodeEncodeError):
        Headers([("X-Name", "\u540d")])


def test_empty_headers():
    h = Headers()
    assert len(h) == 0 and list(h) == []
    assert h.get("Host") is None
    assert h.get_all("Host") == []
    assert "Host" not in h
    assert h.remove("Host") == 0


@pytest.mark.parametrize("name", ["host", "HOST", b"Host", b"hOsT"])
def test_lookups_are_case_insensitive(name):
    h = sample()
    assert name in h
    assert h.get(name) == b"example.com"


@pytest.mark.parametrize("name", ["Hos", "Hostt", "", b"example.com"])
def test_contains_only_whole_names(name):
    assert name not in sample()


@pytest.mark.parametrize("thing", [None, 1, ("Host", "example.com"), ["Host"]])
def test_contains_other_types_is_false(thing):
    assert thing not in sample()


def test_get_returns_the_first_and_get_all_every_value():
    h = sample()
    assert h.get("set-cookie") == b"a=1"
    assert h.get_all("SET-COOKIE") == [b"a=1", b"b=2"]
    assert h.get("X-Missing", b"dflt") == b"dflt"
    assert h.get("X-Missing") is None


def test_add_appends_and_keeps_existing():
    h = sample()
    h.add("Set-Cookie", "c=3")
    h.add(b"X-New", b"1")
    assert h.get_all("set-cookie") == [b"a=1", b"b=2", b"c=3"]
    assert list(h)[-2:] == [(b"Set-Cookie", b"c=3"), (b"X-New", b"1")]


def test_set_replaces_every_field_at_the_first_position():
    h = sample()
    h.set("SET-COOKIE", "z=9")
    assert list(h) == [
        (b"Host", b"example.com"),
        (b"SET-COOKIE", b"z=9"),
        (b"Accept", b"*/*"),
    ]


def test_set_appends_a_missing_field():
    h = sample()
    h.set("X-New", "v")
    assert list(h)[-1] == (b"X-New", b"v")
    assert len(h) == 5


def test_remove_every_field_and_count():
    h = sample()
    assert h.remove(b"SET-cookie") == 2
    assert list(h) == [(b"Host", b"example.com"), (b"Accept", b"*/*")]
    assert h.remove("Set-Cookie") == 0


def test_fields_is_a_live_view_that_survives_edits():
    h = sample()
    view = h.fields()
    h.set("Host", "other")
    h.remove("Accept")
    h.add("X", "1")
    assert view is h.fields()
    assert view == list(h)
    view.append((b"Y", b"2"))
    assert h.get("y") == b"2"


def test_copy_is_independent():
    h = sample()
    c = h.copy()
    assert c == h and c is not h
    c.add("X", "1")
    c.set("Host", "changed")
    assert h.get("X") is None
    assert h.get("Host") == b"example.com"


def test_adopt_does_not_copy():
    fields = [(b"A", b"1")]
    h = Headers._adopt(fields)
    h.add("B", "2")
    assert fields == [(b"A", b"1"), (b"B", b"2")]


def test_equality():
    assert Headers([("A", "1")]) == Headers([(b"A", b"1")])
    assert Headers([("A", "1")]) != Headers([("a", "1")])  # names kept as received
    assert Headers([("A", "1"), ("B", "2")]) != Headers([("B", "2"), ("A", "1")])
    assert Headers([("A", "1")]) != [(b"A", b"1")]


def test_repr_shows_fields():
    assert repr(Headers([("A", "1")])) == "Headers([(b'A', b'1')])"


def test_headers_have_no_instance_dict():
    with pytest.raises(AttributeError):
        Headers().extra = 1  # type: ignore[attr-defined]


# -- Request ---------------------------------------------------------------------------------


def test_request_defaults():
    r = Request("GET", "http://example.com/x", "example.com", 80, b"/x")
    assert r.method == "GET"
    assert r.url == "http://example.com/x"
    assert (r.scheme, r.host, r.port, r.path) == ("http", "example.com", 80, b"/x")
    assert r.version == "1.1"
    assert isinstance(r.headers, Headers) and len(r.headers) == 0
    assert r.client == ("", 0)
    assert r.user == ""
    assert r.addresses is None
    assert r.notes == {}


def test_requests_do_not_share_mutable_defaults():
    a = Request("GET", "u", "h", 80)
    b = Request("GET", "u", "h", 80)
    a.headers.add("X", "1")
    a.notes["k"] = 1
    assert len(b.headers) == 0
    assert b.notes == {}


def test_request_keeps_the_given_headers_object():
    h = Headers([("Host", "h")])
    r = Request("GET", "u", "h", 80, headers=h)
    assert r.headers is h


@pytest.mark.parametrize(
    "host, port, authority",
    [
        ("example.com", 80, "example.com:80"),
        ("192.0.2.1", 8080, "192.0.2.1:8080"),
        ("2001:db8::1", 443, "[2001:db8::1]:443"),
        ("::1", 3128, "[::1]:3128"),
    ],
)
def test_request_authority(host, port, authority):
    assert Request("CONNECT", authority, host, port).authority == authority


def test_request_repr_names_method_url_and_client():
    r = Request("GET", "http://e/", "e", 80, client=("10.0.0.1", 5555))
    assert repr(r) == "<Request GET http://e/ from 10.0.0.1>"


def test_request_rejects_unknown_attributes():
    r = Request("GET", "u", "h", 80)
    with pytest.raises(AttributeError):
        r.hots = "typo"  # type: ignore[attr-defined]


# -- Response --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", sorted(REASONS))
def test_response_default_reason(status):
    r = Response(status)
    assert r.reason == REASONS[status]
    assert r.reason  # every listed status has a phrase


def test_response_reason_for_unknown_status_is_empty_and_explicit_reason_wins():
    assert Response(299).reason == ""
    assert Response(200, "Fine").reason == "Fine"


def test_some_reasons():
    assert REASONS[200] == "OK"
    assert REASONS[403] == "Forbidden"
    assert REASONS[407] == "Proxy Authentication Required"
    assert REASONS[502] == "Bad Gateway"


def test_response_headers_from_pairs_or_headers():
    r = Response(200, headers=[("A", "1"), (b"B", b"2")])
    assert isinstance(r.headers, Headers)
    assert list(r.headers) == [(b"A", b"1"), (b"B", b"2")]
    h = Headers([("C", "3")])
    assert Response(200, headers=h).headers is h
    assert len(Response(200).headers) == 0
    assert Response(200).headers is not Response(200).headers


def test_response_defaults():
    r = Response(204)
    assert r.body == b""
    assert r.result_code is None


@pytest.mark.parametrize(
    "message, body",
    [
        ("denied", b"denied\n"),
        ("denied\n", b"denied\n"),
        ("denied\n\n", b"denied\n"),
        ("caf\xe9 \u540d", "caf\xe9 \u540d\n".encode()),
    ],
)
def test_response_text(message, body):
    r = Response.text(403, message, "TCP_DENIED")
    assert r.status == 403
    assert r.reason == "Forbidden"
    assert r.body == body
    assert r.headers.get("content-type") == b"text/plain; charset=utf-8"
    assert r.result_code == "TCP_DENIED"


def test_response_text_default_result_code():
    assert Response.text(502, "x").result_code is None


def test_response_repr():
    assert repr(Response(404)) == "<Response 404 Not Found>"


def test_response_rejects_unknown_attributes():
    with pytest.raises(AttributeError):
        Response(200).stauts = 500  # type: ignore[attr-defined]
