# -*- test-case-name: tests.test_plugins -*-
"""Finding filter factories by name: built-ins, ``twisted.plugin`` dropins, dotted paths."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.plugin import getPlugins
from twisted.python.reflect import namedAny
from zope.interface import implementer

from fwproxy.filters.accesslog import AccessLogFactory
from fwproxy.filters.acl import AclFilterFactory
from fwproxy.filters.headers import HeadersFilterFactory
from fwproxy.filters.ratelimit import RateLimitFactory
from fwproxy.filters.redact import RedactFactory
from fwproxy.interfaces import IFilterContext, IFilterFactory

BUILTINS: dict[str, Any] = {
    f.name: f
    for f in (
        AclFilterFactory,
        HeadersFilterFactory,
        AccessLogFactory,
        RateLimitFactory,
        RedactFactory,
    )
}


@implementer(IFilterContext)
class FilterContext:
    """What a filter factory is given; see :class:`fwproxy.interfaces.IFilterContext`."""

    def __init__(self, reactor: Any, config: Any, resolver: Any = None) -> None:
        self.reactor = reactor
        self.config = config
        self.resolver = resolver
        self.listening: list[tuple[str, int]] = []
        #: checks Proxy-Authorization for proxy_auth ACLs (fwproxy.auth.Authenticator) or None
        self.authenticator: Any = None


class _CallableFactory:
    def __init__(self, name: str, fn: Any) -> None:
        self.name = name
        self._fn = fn

    def build(self, options: Mapping[str, Any], context: IFilterContext) -> Any:
        return self._fn(options, context)


def find_factory(name: str) -> Any:
    """The :class:`IFilterFactory` called ``name``.

    Looked up, in order: the built-ins (``acl``, ``headers``, ``accesslog``, ``ratelimit``,
    ``redact``);
    factories registered in ``twisted/plugins/`` dropins (by their ``name``); a dotted path to
    an ``IFilterFactory`` provider or to a callable ``(options, context) -> filter``.

    :raise LookupError: with a message saying where it looked.
    """
    if name in BUILTINS:
        return BUILTINS[name]
    for factory in getPlugins(IFilterFactory):
        if getattr(factory, "name", None) == name:
            return factory
    if "." in name:
        try:
            obj = namedAny(name)
        except (ImportError, AttributeError, ValueError) as e:
            raise LookupError(f"filter {name!r}: cannot import it ({e})") from None
        if IFilterFactory.providedBy(obj):
            return obj
        if callable(obj):
            return _CallableFactory(name, obj)
        raise LookupError(f"filter {name!r}: is neither an IFilterFactory nor callable")
    raise LookupError(
        f"filter {name!r}: not a built-in ({', '.join(BUILTINS)}), not registered by a "
        "twisted/plugins dropin, and not a dotted path"
    )
