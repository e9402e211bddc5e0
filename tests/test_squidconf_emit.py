"""The TOML writer of ``convert-squid`` (:mod:`fwproxy.squidconf.emit`): what it writes reads
back as the same values, whatever the text."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fwproxy.squidconf import emit


def test_document() -> None:
    text = emit.document(
        "from squid.conf\nsecond line",
        [
            (["proxy"], {"listen": ["tcp:3128"]}),
            (["empty"], {}),
            (["acl", "squid_a b"], {"src": ["10.0.0.0/8"]}),
            (["headers"], {"via": False, "add_request": {"X-A": "1"}, "n": 1.5, "m": 2.0}),
        ],
    )
    assert text == (
        '# from squid.conf\n# second line\n\n[proxy]\nlisten = ["tcp:3128"]\n\n'
        '[acl."squid_a b"]\nsrc = ["10.0.0.0/8"]\n\n'
        '[headers]\nvia = false\nadd_request = { X-A = "1" }\nn = 1.5\nm = 2\n'
    )


def test_long_lists_are_one_item_a_line() -> None:
    text = emit.value([f"rule number {i}" for i in range(10)])
    assert text.startswith('[\n    "rule number 0",\n')
    assert tomllib.loads("x = " + text)["x"][9] == "rule number 9"


def test_unwritable_values() -> None:
    with pytest.raises(ValueError):
        emit.value(float("nan"))
    with pytest.raises(TypeError):
        emit.value(object())


@given(st.text(), st.text(min_size=1))
def test_any_string_reads_back(s: str, k: str) -> None:
    doc = emit.table(["t", k], {k: s, "_list": [s, s]})
    assert tomllib.loads(doc)["t"][k] == {k: s, "_list": [s, s]} or k == "_list"
