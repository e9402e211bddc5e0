"""Tests for the ``headers`` filter, :mod:`fwproxy.filters.headers`."""

from __future__ import annotations

import pytest
from zope.interface.verify import verifyObject

from fwproxy.filters.headers import (
    FORWARDED_FOR,
    HeaderPolicy,
    HeadersFilter,
    HeadersFilterFactory,
    forwarded_for,
)
from fwproxy.interfaces import IFilterFactory, IRequestFilter, IResponseFilter
from fwproxy.message import Headers, Request, Response


def make(**options) -> HeadersFilter:
    return HeadersFilterFactory.build(options, None)  # type: ignore[arg-type]


def request(fields=(), client="10.0.0.1") -> Request:
    return Request(
        "GET",
        "http://example.com/",
        "example.com",
        80,
        b"/",
        headers=Headers(fields),
        client=(client, 40000),
    )


def response(fields=()) -> Response:
    return Response(200, headers=Headers(fields))


def xff(req: Request) -> list[bytes]:
    return req.headers.get_all("X-Forwarded-For")


def test_filter_provides_its_interfaces():
    f = make()
    assert verifyObject(IRequestFilter, f)
    assert verifyObject(IResponseFilter, f)
    assert verifyObject(IFilterFactory, HeadersFilterFactory)
    assert HeadersFilterFactory.name == "headers"


def test_defaults():
    p = HeaderPolicy.from_options({})
    assert p == HeaderPolicy()
    assert p.forwarded_for == "delete"
    assert p.via is False
    assert FORWARDED_FOR == ("on", "off", "transparent", "truncate", "delete")


# -- X-Forwarded-For -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy, sent, client, expected",
    [
        # on: append the client's address
        ("on", [], "10.0.0.1", [b"10.0.0.1"]),
        ("on", ["1.1.1.1"], "10.0.0.1", [b"1.1.1.1, 10.0.0.1"]),
        (
            "on",
            ["1.1.1.1", "2.2.2.2, 3.3.3.3"],
            "10.0.0.1",
            [b"1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.1"],
        ),
        ("on", [], "::ffff:10.0.0.1", [b"10.0.0.1"]),
        ("on", [], "2001:db8::1", [b"2001:db8::1"]),
        ("on", [], "fe80::1%eth0", [b"fe80::1"]),
        # off: append "unknown"
        ("off", [], "10.0.0.1", [b"unknown"]),
        ("off", ["1.1.1.1"], "10.0.0.1", [b"1.1.1.1, unknown"]),
        # transparent: exactly as sent
        ("transparent", [], "10.0.0.1", []),
        ("transparent", ["1.1.1.1"], "10.0.0.1", [b"1.1.1.1"]),
        ("transparent", ["1.1.1.1", "forged"], "10.0.0.1", [b"1.1.1.1", b"forged"]),
        # truncate: the client's address alone
        ("truncate", [], "10.0.0.1", [b"10.0.0.1"]),
        ("truncate", ["1.1.1.1", "2.2.2.2"], "10.0.0.1", [b"10.0.0.1"]),
        ("truncate", ["1.1.1.1"], "::ffff:192.0.2.9", [b"192.0.2.9"]),
        # delete: none leaves the proxy
        ("delete", [], "10.0.0.1", []),
        ("delete", ["1.1.1.1", "2.2.2.2"], "10.0.0.1", []),
    ],
)
def test_forwarded_for(policy, sent, client, expected):
    req = request([("Host", "example.com"), *(("X-Forwarded-For", v) for v in sent)], client)
    assert make(forwarded_for=policy).requestReceived(req) is None
    assert xff(req) == expected
    assert req.headers.get("Host") == b"example.com"


@pytest.mark.parametrize("name", ["x-forwarded-for", "X-FORWARDED-FOR", "X-Forwarded-For"])
@pytest.mark.parametrize(
    "policy, expected",
    [
        ("on", [b"6.6.6.6, 10.0.0.1"]),
        ("off", [b"6.6.6.6, unknown"]),
        ("truncate", [b"10.0.0.1"]),
        ("delete", []),
    ],
)
def test_client_xff_is_matched_whatever_its_case(name, policy, expected):
    req = request([(name, "6.6.6.6"), ("Host", "h")])
    make(forwarded_for=policy).requestReceived(req)
    assert xff(req) == expected
    assert len(req.headers) == 1 + len(expected)  # the client's field is gone


def test_transparent_leaves_fields_in_place():
    fields = [("X-Forwarded-For", "1.1.1.1"), ("Host", "h"), ("x-forwarded-for", "2.2.2.2")]
    req = request(fields)
    make(forwarded_for="transparent").requestReceived(req)
    assert req.headers == Headers(fields)


def test_forwarded_for_function_with_a_non_ip_client():
    assert forwarded_for("on", [], "unix:/tmp/s") == b"unix:/tmp/s"
    assert forwarded_for("truncate", [b"x"], "") == b""
    assert forwarded_for("delete", [b"x"], "10.0.0.1") is None
    assert forwarded_for("transparent", [], "10.0.0.1") is None


def test_default_policy_deletes_xff():
    req = request([("X-Forwarded-For", "1.1.1.1")])
    make().requestReceived(req)
    assert xff(req) == []


# -- Via -------------------------------------------------------------------------------------


def test_via_on_requests_and_responses():
    f = make(via=True)
    req = request([("Via", "1.0 upstream-proxy")])
    f.requestReceived(req)
    assert req.headers.get_all("via") == [b"1.0 upstream-proxy", b"1.1 fwproxy"]
    resp = response([("Content-Type", "text/html")])
    assert f.responseReceived(req, resp) is None
    assert resp.headers.get_all("Via") == [b"1.1 fwproxy"]


def test_via_name():
    f = make(via=True, via_name="egress-1.example")
    req = request()
    f.requestReceived(req)
    assert req.headers.get("Via") == b"1.1 egress-1.example"


def test_no_via_by_default():
    f = make()
    req = request()
    f.requestReceived(req)
    resp = response()
    f.responseReceived(req, resp)
    assert "Via" not in req.headers and "Via" not in resp.headers


# -- remove / set / add ----------------------------------------------------------------------


def test_request_edits():
    f = make(
        remove_request=["Cookie", "x-debug"],
        set_request={"User-Agent": "fwproxy", "X-New": "n"},
        add_request={"X-Tag": "t"},
    )
    req = request(
        [
            ("Host", "h"),
            ("cookie", "a=1"),
            ("User-Agent", "curl"),
            ("X-Debug", "1"),
            ("user-agent", "again"),
            ("X-Tag", "client"),
            ("Cookie", "b=2"),
        ]
    )
    f.requestReceived(req)
    assert list(req.headers) == [
        (b"Host", b"h"),
        (b"User-Agent", b"fwproxy"),
        (b"X-Tag", b"client"),
        (b"X-New", b"n"),
        (b"X-Tag", b"t"),
    ]


def test_response_edits():
    f = make(
        remove_response=["Server", "X-Powered-By"],
        set_response={"Cache-Control": "no-store"},
        add_response={"Set-Cookie": "proxy=1"},
    )
    resp = response(
        [
            ("Server", "nginx"),
            ("Cache-Control", "max-age=60"),
            ("Set-Cookie", "a=1"),
            ("x-powered-by", "php"),
        ]
    )
    req = request([("Server", "kept: requests are not edited by response options")])
    f.requestReceived(req)
    f.responseReceived(req, resp)
    assert list(resp.headers) == [
        (b"Cache-Control", b"no-store"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"proxy=1"),
    ]
    assert req.headers.get("Server") is not None


def test_request_options_do_not_touch_responses():
    f = make(remove_request=["Server"], add_request={"X-A": "1"})
    resp = response([("Server", "nginx")])
    f.responseReceived(request(), resp)
    assert list(resp.headers) == [(b"Server", b"nginx")]


def test_remove_then_set_then_add_then_via():
    f = make(
        remove_request=["X-A"], set_request={"X-A": "set"}, add_request={"X-A": "add"}, via=True
    )
    req = request([("X-A", "client")])
    f.requestReceived(req)
    assert list(req.headers) == [(b"X-A", b"set"), (b"X-A", b"add"), (b"Via", b"1.1 fwproxy")]


def test_latin1_values():
    f = make(set_request={"X-Name": "caf\u00e9"})
    req = request()
    f.requestReceived(req)
    assert req.headers.get("X-Name") == b"caf\xe9"


# -- option validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"forwarded": "on"}, "headers.forwarded: unknown key"),
        ({"forwarded_for": "maybe"}, "headers.forwarded_for: 'maybe' is not one of"),
        ({"forwarded_for": True}, "headers.forwarded_for: True is not one of"),
        ({"forwarded_for": "ON"}, "headers.forwarded_for: 'ON' is not one of"),
        ({"via": "yes"}, "headers.via: expected true or false"),
        ({"via": 1}, "headers.via: expected true or false"),
        ({"via_name": "two words"}, "headers.via_name: 'two words' is not a valid token"),
        ({"via_name": ""}, "headers.via_name: '' is not a valid token"),
        ({"via_name": "caf\u00e9"}, "headers.via_name: 'caf\u00e9' is not a valid token"),
        ({"via_name": 1}, "headers.via_name: 1 is not a valid token"),
        ({"remove_request": "Cookie"}, "headers.remove_request: expected a list of header names"),
        ({"remove_request": ["Bad Name"]}, "headers.remove_request: expected a list"),
        ({"remove_response": [1]}, "headers.remove_response: expected a list"),
        ({"remove_response": ["\u540d"]}, "headers.remove_response: expected a list"),
        ({"set_request": ["X-A"]}, "headers.set_request: expected a table"),
        ({"set_request": {"Bad Name": "v"}}, "headers.set_request: 'Bad Name' is not a valid"),
        ({"set_request": {"X-\u00e9": "v"}}, "headers.set_request: 'X-\u00e9' is not a valid"),
        ({"set_request": {"X-A": 1}}, "headers.set_request.X-A: value must be a one-line"),
        ({"set_response": {"X-A": "a\r\nX-Injected: 1"}}, "headers.set_response.X-A: value"),
        ({"add_request": {"X-A": "a\nb"}}, "headers.add_request.X-A: value must be a one-line"),
        ({"add_response": {"X-A": "a\x00b"}}, "headers.add_response.X-A: value must be a one"),
        ({"add_response": {"X-A": "\u20ac"}}, "headers.add_response.X-A: value must be Latin-1"),
    ],
)
def test_option_errors_name_the_key(options, message):
    with pytest.raises(ValueError) as e:
        HeaderPolicy.from_options(options)
    assert str(e.value).startswith(message), str(e.value)
    assert type(e.value) is ValueError  # not a stray UnicodeEncodeError


def test_option_errors_use_where():
    with pytest.raises(ValueError, match=r"^filters\[2\]\.options\.via: "):
        HeaderPolicy.from_options({"via": "x"}, where="filters[2].options")


def test_policy_is_typed():
    p = HeaderPolicy.from_options(
        {
            "forwarded_for": "on",
            "via": True,
            "remove_request": ["Cookie"],
            "set_response": {"X-A": "1"},
        }
    )
    assert p.remove_request == (b"Cookie",)
    assert p.set_response == ((b"X-A", b"1"),)
    assert p.add_request == ()
    with pytest.raises(AttributeError):
        p.via = False  # type: ignore[misc]
