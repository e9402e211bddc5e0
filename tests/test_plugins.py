"""Finding filter factories by name (fwproxy.plugins)."""

from __future__ import annotations

from typing import Any

import pytest
from zope.interface.verify import verifyObject

from fwproxy.interfaces import IFilterContext, IFilterFactory
from fwproxy.plugins import BUILTINS, FilterContext, find_factory


def make_filter(options: Any, context: Any) -> tuple[Any, Any]:
    return (options, context)


def test_builtins_by_short_name() -> None:
    for name in ("acl", "headers", "accesslog"):
        f = find_factory(name)
        assert f is BUILTINS[name]
        verifyObject(IFilterFactory, f)


def test_a_dotted_path_to_a_callable() -> None:
    f = find_factory("tests.test_plugins.make_filter")
    assert f.build({"x": 1}, "ctx") == ({"x": 1}, "ctx")


@pytest.mark.parametrize(
    "name, message",
    [
        ("nope", "not a built-in"),
        ("no.such.module", "cannot import"),
        ("tests.test_plugins.BUILTINS", "neither an IFilterFactory nor callable"),
    ],
)
def test_unknown_names_say_where_they_looked(name: str, message: str) -> None:
    with pytest.raises(LookupError, match=message):
        find_factory(name)


def test_the_context_provides_its_interface() -> None:
    verifyObject(IFilterContext, FilterContext(object(), object(), object()))
