"""Tests for :mod:`fwproxy.acl_regex` (``urlpath_regex`` and its %-decoding) and the
``localport`` ACL of :mod:`fwproxy.acl`, sans-IO and through a proxy in memory."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fwproxy.acl import AclContext, AclError, make_acl
from fwproxy.acl_regex import squid_url, unescape
from fwproxy.config import ConfigError, load
from fwproxy.testing import FakeResolver, Harness, get, status_of

ORIGIN = "198.18.0.10"


def ctx(**kw: object) -> AclContext:
    values: dict[str, object] = {
        "client": None,
        "method": "GET",
        "host": "example.com",
        "port": 80,
        "url": "http://example.com/",
        "path": b"/",
    }
    values.update(kw)
    return AclContext(**values)  # type: ignore[arg-type]


# -- Squid's rfc1738_unescape ------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, decoded",
    [
        (b"/plain", "/plain"),
        (b"/%61dmin", "/admin"),
        (b"/%41%42", "/AB"),
        (b"/a%2fb", "/a/b"),
        (b"/%%41", "/%41"),  # %% is one %, and what follows is not decoded again
        (b"/%2541", "/%41"),
        (b"/%00x", "/%00x"),  # %00 stays
        (b"/%zz", "/%zz"),
        (b"/%4", "/%4"),
        (b"/%", "/%"),
        (b"/%e9t%C3%A9", "/\xe9t\xc3\xa9"),  # bytes, one character each
    ],
)
def test_unescape_as_squid(raw, decoded):
    assert unescape(raw) == decoded


# -- url_regex: the URL as Squid sees it -------------------------------------------------------


@pytest.mark.parametrize(
    "sent, seen",
    [
        ("http://www.example.com/", "http://www.example.com/"),
        ("http://WWW.Example.COM/A", "http://www.example.com/A"),  # the host, not the path
        ("HTTP://example.com/", "http://example.com/"),
        ("http://example.com:80/x", "http://example.com/x"),  # the default port left out
        ("http://example.com:8080/x", "http://example.com:8080/x"),
        ("https://example.com:443/x", "https://example.com/x"),
        ("http://example.com:443/x", "http://example.com:443/x"),
        ("http://example.com", "http://example.com/"),
        ("http://user:pw@example.com/x", "http://example.com/x"),
        ("http://[2001:DB8::1]:80/x", "http://[2001:db8::1]/x"),
        ("http://[2001:db8::1]:8080/x", "http://[2001:db8::1]:8080/x"),
        ("http://example.com/%61dmin?q=%2F", "http://example.com/admin?q=/"),
        ("http://www.example.com.:80/", "http://www.example.com/"),  # trailing dots go
        ("Example.COM.:443", "example.com:443"),  # CONNECT
        ("[2001:DB8::1]:443", "[2001:db8::1]:443"),
    ],
)
def test_squid_url(sent, seen):
    assert squid_url(sent) == seen


@pytest.mark.parametrize(
    "patterns, url, matches",
    [
        ([r"^http://www\.example\.com/$"], "http://WWW.Example.COM:80/", True),
        (["/admin"], "http://example.com/%61dmin", True),
        (["%61"], "http://example.com/%61dmin", False),
        ([r":443$"], "example.com:443", True),
        ([r"^http://[^/]*:8080/"], "http://example.com:8080/", True),
    ],
)
def test_url_regex_matches_what_squid_matches(patterns, url, matches):
    assert make_acl("u", "url_regex", patterns).match(ctx(url=url)) is matches


# -- urlpath_regex ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "patterns, path, matches",
    [
        ([r"\.gif$"], b"/img/a.gif", True),
        ([r"\.gif$"], b"/img/a.GIF", False),  # case-sensitive
        ([r"(?i)\.gif$"], b"/img/a.GIF", True),  # Squid's -i
        ([r"\.gif$"], b"/img/a.gif?x=1", False),  # the query is part of it
        ([r"\?x=1$"], b"/img/a.gif?x=1", True),
        ([r"^/admin"], b"/%61dmin/users", True),  # %-decoded
        ([r"^/admin"], b"/public/admin", False),
        ([r"^/$"], b"/", True),
        (["^/a", "^/b"], b"/b", True),
        ([r"example\.com"], b"/", False),  # the host is not in the path
    ],
)
def test_urlpath_regex(patterns, path, matches):
    acl = make_acl("p", "urlpath_regex", patterns)
    assert acl.match(ctx(path=path, url="http://example.com" + path.decode())) is matches


@pytest.mark.parametrize("pattern", ["", ".*", "^$"])
def test_urlpath_regex_never_matches_a_connect(pattern):
    """Squid cannot evaluate it without a path, and counts it as not matching."""
    acl = make_acl("p", "urlpath_regex", [pattern])
    assert not acl.match(ctx(method="CONNECT", path=b"", url="example.com:443", port=443))


@pytest.mark.parametrize(
    "kind, values, fragment",
    [
        ("urlpath_regex", ["("], "acl.p.urlpath_regex: bad regular expression '('"),
        ("urlpath_regex", [], "acl.p.urlpath_regex: expected a non-empty list"),
        ("localport", [0], "acl.p.localport: '0' is out of range"),
        ("localport", ["80-70"], "acl.p.localport: '80-70' is out of range"),
        ("localport", ["http"], "acl.p.localport: 'http' is not a port or range"),
    ],
)
def test_definition_errors(kind, values, fragment):
    with pytest.raises(AclError) as e:
        make_acl("p", kind, values)
    assert str(e.value).startswith(fragment)


# -- localport -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ports, local, matches",
    [
        ([3128], 3128, True),
        ([3128], 8080, False),
        (["8000-8999"], 8080, True),
        (["8000-8999", 3128], 3128, True),
        ([3128], 0, False),  # unknown: no listener port
    ],
)
def test_localport(ports, local, matches):
    acl = make_acl("lp", "localport", ports)
    assert acl.match(ctx(local_port=local, port=local)) is matches


def test_localport_is_not_the_destination_port():
    acl = make_acl("lp", "localport", [3128])
    assert not acl.match(ctx(local_port=8080, port=3128))
    assert acl.match(ctx(local_port=3128, port=80))


@pytest.mark.parametrize(
    "text, line, key, fragment",
    [
        ('[acl.a]\nsrc = ["10.0.0.0/8"]\n\n[acl.p]\nurlpath_regex = ["a("]\n', 5, "urlpath_regex", "bad regular expression"),
        ("[acl.p]\nlocalport = [3128, 99999]\n", 2, "localport", "'99999' is out of range"),
    ],
)  # fmt: skip
def test_config_errors_name_file_and_line(tmp_path, text, line, key, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load(str(path))
    msg = str(e.value)
    assert f"{path}:{line}: acl.p.{key}: " in msg and fragment in msg


# -- through the proxy -----------------------------------------------------------------------

CONFIG = """
[acl.staff_port]
localport = [3129]

[acl.admin]
urlpath_regex = ["^/admin"]

[access]
rules = ["deny admin", "allow staff_port", "deny all"]
"""


@pytest.fixture
def proxy(make: Callable[..., Harness]) -> Harness:
    return make(config=CONFIG, resolver=FakeResolver({"www.example.com": [ORIGIN]}))


def _status(h: Harness, local_port: int, target: bytes, host: str = "10.1.0.5") -> int:
    c = h.connect(local=(host, local_port))
    c.send(get(target))
    if h.attempts:
        return 0  # let through to the origin
    return status_of(c.received())


def test_localport_decides_by_the_port_the_client_connected_to(proxy: Harness) -> None:
    assert _status(proxy, 3128, b"http://www.example.com:3129/") == 403
    assert proxy.attempts == []
    assert _status(proxy, 3129, b"http://www.example.com/") == 0


def test_urlpath_regex_through_the_proxy(proxy: Harness) -> None:
    assert _status(proxy, 3129, b"http://www.example.com/%61dmin?x") == 403
    assert _status(proxy, 3129, b"http://www.example.com/public?admin") == 0


def test_localport_is_the_listeners_even_when_the_transport_later_names_another(
    proxy: Harness,
) -> None:
    """A PROXY-protocol transport reports the header's destination once its header is read:
    ``localport`` still sees the port the client connected to on the proxy."""
    c = proxy.connect(local=("10.1.0.5", 3129))
    c.transport.hostAddr = type(c.transport.hostAddr)("TCP", "203.0.113.1", 3128)
    c.send(get(b"http://www.example.com/"))
    assert c.proto.local == ("203.0.113.1", 3128)
    assert proxy.attempts, "denied: localport looked at the PROXY header's port"
