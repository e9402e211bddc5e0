"""Bumped tunnels without sockets: the binding of the requests inside to the CONNECT authority
(:mod:`fwproxy.intercepted`) and the bump itself over in-memory transports
(:mod:`fwproxy.bump`)."""

from __future__ import annotations

import pytest

from fwproxy.intercepted import Interception, _split_host


@pytest.mark.parametrize(
    "value, expected",
    [
        (b"example.test", ("example.test", None)),
        (b"Example.TEST.:8443", ("example.test", 8443)),
        (b"[::1]:443", ("::1", 443)),
        (b"[::1]", ("::1", None)),
        (b"example.test:x", ("example.test:x", None)),
    ],
)
def test_split_host(value: bytes, expected: tuple[str, int | None]) -> None:
    assert _split_host(value) == expected


def test_the_tunnel_names_its_connect_host_and_server_name_on_its_port() -> None:
    it = Interception("Connect.Test", 443, "sni.test", None)
    assert it.prefix == b"https://connect.test"
    assert it.names("connect.test", None) and it.names("connect.test", 443)
    assert it.names("sni.test", None)
    assert not it.names("other.test", None)
    assert not it.names("connect.test", 8443)
    assert Interception("::1", 8443, "", None).prefix == b"https://[::1]:8443"
