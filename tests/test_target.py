"""Request targets (fwproxy.target): absolute-form URIs and CONNECT authorities."""

from __future__ import annotations

import pytest

from fwproxy.http1 import ProtocolError
from fwproxy.target import parse_absolute, parse_authority


@pytest.mark.parametrize(
    "target, expected",
    [
        (b"http://example.com/", ("http", "example.com", 80, b"/", b"example.com")),
        (
            b"http://EXAMPLE.com:8080/a?b=c",
            ("http", "example.com", 8080, b"/a?b=c", b"example.com:8080"),
        ),
        (b"http://example.com", ("http", "example.com", 80, b"/", b"example.com")),
        (b"http://[::1]:81/x", ("http", "::1", 81, b"/x", b"[::1]:81")),
        (b"HTTP://example.com/", ("http", "example.com", 80, b"/", b"example.com")),
        (b"https://example.com/a", ("https", "example.com", 443, b"/a", b"example.com")),
        (b"HTTPS://Example.com", ("https", "example.com", 443, b"/", b"example.com")),
        (b"https://example.com:8443/", ("https", "example.com", 8443, b"/", b"example.com:8443")),
        (b"https://example.com:443/", ("https", "example.com", 443, b"/", b"example.com:443")),
        (b"https://[::1]/?q", ("https", "::1", 443, b"/?q", b"[::1]")),
    ],
)
def test_absolute_targets(target: bytes, expected: tuple[str, str, int, bytes, bytes]) -> None:
    assert parse_absolute(target) == expected


@pytest.mark.parametrize(
    "target, message",
    [
        (b"ftp://example.com/", "only http:// and https://"),
        (b"wss://example.com/", "only http:// and https://"),
        (b"http:///path", "malformed"),
        (b"https:///path", "malformed"),
        (b"http://exa mple.com/", ""),
    ],
)
def test_bad_absolute_targets_are_400(target: bytes, message: str) -> None:
    with pytest.raises(ProtocolError) as e:
        parse_absolute(target)
    assert e.value.status == 400 and message in e.value.message


@pytest.mark.parametrize(
    "authority", [b"example.com", b"example.com:0", b"example.com:99999", b"[::1]", b"a/b:443"]
)
def test_bad_authorities(authority: bytes) -> None:
    with pytest.raises(ValueError):
        parse_authority(authority)
