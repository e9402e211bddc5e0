# -*- test-case-name: tests.test_testing -*-
"""The one place :mod:`fwproxy.testing` reaches into how a proxy is assembled.

Everything the test kit needs from :mod:`fwproxy.factory` and :mod:`fwproxy.plugins` is imported
here and nowhere else in the package: :class:`~fwproxy.factory.ProxyFactory` (used only through
its constructor, ``buildProtocol``, ``startFactory`` and ``stopFactory``),
:func:`~fwproxy.factory.build_filters` and :class:`~fwproxy.plugins.FilterContext`. When the
way a proxy is put together changes, this module is what follows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fwproxy.config import Config
from fwproxy.factory import ProxyFactory, build_filters, filter_context
from fwproxy.filters.accesslog import AccessLog
from fwproxy.resolver import ReactorResolver

__all__ = ["ProxyFactory", "configured_filters", "default_resolver", "make_factory"]


def default_resolver(reactor: Any) -> Any:
    """The resolver a proxy uses when none is given: the reactor's, with a cache."""
    return ReactorResolver(reactor)


def configured_filters(
    config: Config,
    reactor: Any,
    resolver: Any,
    portal: Any = None,
    listening: list[tuple[str, int]] | None = None,
    access_log: bool = True,
) -> list[object]:
    """Build the filters ``config`` names (built-ins first, then ``[[filters]]``), given the
    context a :class:`ProxyFactory` gives its own: the reactor, the configuration, the resolver
    and, when ``[auth]`` or ``portal`` asks for one, an authenticator for ``proxy_auth`` ACLs.

    :param listening: the list the ``to_self`` ACL reads the proxy's listening addresses from;
        the caller appends to it once it listens.
    :param access_log: keep the built-in ``accesslog`` filter (in-memory tests drop it: it
        writes to standard output).
    """
    context = filter_context(reactor, config, resolver, portal)
    if listening is not None:
        context.listening = listening
    built = build_filters(config, context)
    if not access_log:
        built = [f for f in built if not isinstance(f, AccessLog)]
    return built


def make_factory(
    config: Config,
    reactor: Any,
    filters: Sequence[object] | None,
    resolver: Any,
    portal: Any = None,
) -> ProxyFactory:
    """A :class:`ProxyFactory` running ``filters`` (``None``: the ones ``config`` names, built
    by the factory itself)."""
    return ProxyFactory(
        config,
        reactor,
        filters=None if filters is None else list(filters),
        resolver=resolver,
        portal=portal,
    )
