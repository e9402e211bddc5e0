"""Is a destination the proxy itself (fwproxy.selfcheck): loop detection and ``to_self``."""

from __future__ import annotations

import pytest

from fwproxy.selfcheck import all_self, is_self, parse_ip

LISTEN_ONE = [("127.0.0.1", 3128)]
LISTEN_ALL = [("0.0.0.0", 3128), ("::", 3128)]


@pytest.mark.parametrize(
    "addresses, port, listening, local, expected",
    [
        (["127.0.0.1"], 3128, LISTEN_ONE, None, True),
        (["127.0.0.1"], 80, LISTEN_ONE, None, False),  # another service on the host
        (["127.0.0.1"], None, LISTEN_ONE, None, True),  # any port: to_self
        (["127.0.0.2"], 3128, LISTEN_ONE, None, False),
        (["127.0.0.2"], 3128, LISTEN_ALL, None, True),  # wildcard: all of loopback
        (["0.0.0.0"], 3128, LISTEN_ALL, None, True),
        (["::1"], 3128, LISTEN_ALL, None, True),
        (["::ffff:127.0.0.1"], 3128, LISTEN_ONE, None, True),  # IPv4-mapped
        (["10.1.2.3"], 3128, LISTEN_ALL, ("10.1.2.3", 3128), True),  # reached on that address
        (["10.1.2.3"], 3128, LISTEN_ONE, ("10.1.2.3", 3128), True),  # PROXY listener: local
        (["10.1.2.3"], 443, LISTEN_ALL, ("10.1.2.3", 3128), False),
        (["10.1.2.4"], 3128, LISTEN_ALL, ("10.1.2.3", 3128), False),
        (["93.184.216.34", "127.0.0.1"], 3128, LISTEN_ONE, None, True),  # any of them
        (["not-an-ip"], 3128, LISTEN_ALL, None, False),
        ([], 3128, LISTEN_ALL, None, False),
    ],
)
def test_is_self(addresses, port, listening, local, expected) -> None:  # type: ignore[no-untyped-def]
    assert is_self(addresses, port, listening, local) is expected


def test_all_self_needs_every_address_and_at_least_one() -> None:
    one, other = parse_ip("127.0.0.1"), parse_ip("93.184.216.34")
    assert one is not None and other is not None
    assert all_self([one], None, LISTEN_ONE)
    assert not all_self([one, other], None, LISTEN_ONE)
    assert not all_self([], None, LISTEN_ONE)


def test_loop_detection_and_to_self_agree() -> None:
    """The factory's loop check and the ``to_self`` ACL ask the same function: a destination
    that is a loop is always ``to_self``."""
    from fwproxy.acl import AclContext, predefined

    to_self = predefined()["to_self"]
    for addresses, port, listening, local, expected in [
        (["127.0.0.2"], 3128, LISTEN_ALL, None, True),
        (["127.0.0.1"], 3128, LISTEN_ONE, None, True),
    ]:
        ip = parse_ip(addresses[0])
        ctx = AclContext(
            client=None,
            method="GET",
            host=addresses[0],
            port=port,
            url="",
            user="",
            now=0.0,
            addresses=(ip,),
            listening=listening,
        )
        assert is_self(addresses, port, listening, local) is expected
        assert to_self.match(ctx) is expected
