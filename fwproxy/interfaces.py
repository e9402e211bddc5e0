# -*- test-case-name: tests.test_filters -*-
"""The contracts every fwproxy feature plugs into.

A *filter* is any object that provides one or more of the hook interfaces below
(:class:`IConnectionFilter`, :class:`IRequestFilter`, :class:`IConnectFilter`,
:class:`IResponseFilter`, :class:`ITransactionObserver`). The proxy calls the hooks of the
configured filters in configuration order. The built-in filters (``acl``, ``headers``,
``accesslog``) are written against exactly these interfaces.

Each hook may answer synchronously (return its value) or asynchronously (return a
:class:`twisted.internet.defer.Deferred` that fires with that value). When every filter answers
synchronously no Deferred is allocated for the request. While a hook's Deferred is pending, the
proxy reads nothing more from that client, so a slow hook cannot make the proxy buffer.

A filter reaches the proxy from the configuration through an :class:`IFilterFactory`: built-ins
by short name, third-party factories by the ``name`` their ``twisted/plugins/`` dropin registers
(found with :func:`twisted.plugin.getPlugins`), or by dotted path.
"""

from __future__ import annotations

from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface


class IFilterContext(Interface):
    """What the proxy hands a filter factory when it builds a filter."""

    reactor = Attribute(
        "The reactor the proxy runs on (IReactorTime, IReactorTCP, ...). Filters schedule "
        "timers and make connections through it, never through a global reactor."
    )
    config = Attribute("The proxy's whole validated configuration (fwproxy.config.Config).")
    resolver = Attribute(
        "The proxy's IResolver: resolve(host) -> Deferred firing with a list of IP address "
        "strings. Filters that need a destination's address should call "
        "request.addresses-aware helpers rather than resolving twice."
    )
    listening = Attribute(
        "A list of (host, port) the proxy listens on; filled in when listening starts."
    )
    authenticator = Attribute(
        "An fwproxy.auth.Authenticator turning Proxy-Authorization values into user names "
        "(through a twisted.cred Portal), or None when no authentication is configured."
    )


class IFilterFactory(IPlugin):
    """Builds a filter from its configuration. Put a provider of this interface at module
    level in a ``twisted/plugins/`` dropin to make the filter available by ``name``
    (``twisted.plugin.getPlugins`` finds it; this interface extends ``IPlugin`` for that)."""

    name = Attribute('The short name used in ``[[filters]] name = ...``, e.g. ``"acme.tagger"``.')

    def build(options, context):  # type: ignore[no-untyped-def]
        """Return a new filter configured by ``options``.

        :param options: the ``options`` table of the ``[[filters]]`` entry (a mapping; empty
            when absent).
        :param context: an :class:`IFilterContext`.
        :return: an object providing one or more of the hook interfaces.
        :raise ValueError: when ``options`` are invalid; the message names the bad option.
            ``fwproxy check-config`` reports it as a configuration error, and the proxy refuses
            to start. Building must have no other side effect (open files lazily).
        """


class IConnectionFilter(Interface):
    """Sees each client connection when its first bytes arrive, before any of them is parsed
    (behind a PROXY-protocol listener, once its header has named the real client). A
    connection that sends nothing is never seen (nor logged); it is closed at
    ``timeouts.request_header``."""

    def clientConnected(client, local):  # type: ignore[no-untyped-def]
        """A client connected.

        :param client: the client's ``(host, port)`` (for a PROXY-protocol listener, the
            original client's).
        :param local: the proxy's ``(host, port)`` that the client connected to.
        :return: ``True`` (or ``None``) to serve the connection, ``False`` to close it at once;
            or a Deferred firing with one of those.
        """


class IRequestFilter(Interface):
    """Sees every request head that is to be relayed (not CONNECT, not the proxy's own pages)."""

    def requestReceived(request):  # type: ignore[no-untyped-def]
        """A request head arrived.

        The filter may modify ``request`` in place (``headers``, ``path``, ``host``, ``port``,
        ``addresses``, ``notes``) to change what is sent upstream.

        :param request: a :class:`fwproxy.message.Request`.
        :return: ``None`` to let the request go on to the next filter and then upstream; or a
            :class:`fwproxy.message.Response` to answer the client with it instead (a denial
            is ``Response.text(403, ...)``) — later filters are then skipped; or a Deferred
            firing with one of those.
        """


class IConnectFilter(Interface):
    """Sees every CONNECT request."""

    def connectReceived(request):  # type: ignore[no-untyped-def]
        """A CONNECT request arrived; ``request.host`` and ``request.port`` name the target.

        :return: as :meth:`IRequestFilter.requestReceived`: ``None`` to go on, a
            :class:`fwproxy.message.Response` to answer (the tunnel is then not made), or a
            Deferred firing with one of those.
        """


class IResponseFilter(Interface):
    """Sees every upstream response head before it is sent to the client."""

    def responseReceived(request, response):  # type: ignore[no-untyped-def]
        """An upstream response head arrived for ``request``.

        The filter may modify ``response.headers``, ``response.status`` and
        ``response.reason`` in place. The body streams afterwards and is not seen here.

        :param request: the :class:`fwproxy.message.Request` as it was sent upstream.
        :param response: a :class:`fwproxy.message.Response` with an empty ``body``.
        :return: ``None`` to send the (possibly modified) head on; a different
            :class:`fwproxy.message.Response` with a complete ``body`` to send instead (the
            upstream body is then discarded and the upstream connection closed); or a
            Deferred firing with one of those.
        """


class ITransactionObserver(Interface):
    """Told about every finished transaction (access logs, metrics)."""

    def transactionFinished(record):  # type: ignore[no-untyped-def]
        """A transaction ended (answered, relayed, tunnelled, denied or failed).

        :param record: a :class:`fwproxy.record.TransactionRecord`.
        :return: ignored. Must not raise; must not block (buffer and write asynchronously).
        """


class IFilterLifecycle(Interface):
    """Optional: a filter that holds resources (files, sockets, timers)."""

    def startFilter():  # type: ignore[misc]
        """The proxy is starting to serve. Open resources here, not in the factory."""

    def stopFilter():  # type: ignore[misc]
        """The proxy is stopping. Flush and release resources; may return a Deferred."""

    def reopen():  # type: ignore[misc]
        """Re-open files (after log rotation)."""


class IResolver(Interface):
    """Turns host names into addresses for the proxy's connections and ``dst`` ACLs."""

    def resolve(host):  # type: ignore[no-untyped-def]
        """Resolve ``host``.

        :param host: a host name or an IP address literal (returned as is).
        :return: a list of IP address strings, or a Deferred firing with one; an empty list or
            a failure means the name does not resolve.
        """
