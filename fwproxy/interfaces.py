# -*- test-case-name: tests.test_interfaces -*-
"""The contracts every fwproxy feature plugs into.

A *filter* is any object that provides one or more of the hook interfaces below
(:class:`IConnectionFilter`, :class:`IRequestFilter`, :class:`IConnectFilter`,
:class:`IDestinationCheck`, :class:`IUpstreamSelector`, :class:`IResponseFilter`,
:class:`IRequestBodyFilter`, :class:`IResponseBodyFilter`, :class:`ITransactionObserver`). The proxy
calls the hooks of the configured filters in configuration order. The built-in filters (``acl``,
``headers``, ``accesslog``) are written against exactly these interfaces.

Answers. Each hook may answer synchronously (return its value) or asynchronously (return a
:class:`twisted.internet.defer.Deferred` that fires with that value). When every filter answers
synchronously no Deferred is allocated for the request. While a hook's Deferred is pending, the
proxy reads nothing more from that client, so a slow hook cannot make the proxy buffer; a
request (or CONNECT) still undecided after ``timeouts.connect`` seconds is answered ``504``.

Errors. A hook that raises, or whose Deferred fails, ends the transaction: if nothing has been
sent to the client yet it gets ``500 Internal Server Error`` and the connection is closed,
otherwise the connection is cut; later hooks of that kind are not called. The proxy logs the
failure with the filter's class and the hook's name (``fwproxy: filter acme.Tagger failed
(requestReceived) in <RelayTransaction ...>``) and the transaction is logged with status 500.
A failing :class:`IConnectionFilter` closes the connection; a failing
:class:`ITransactionObserver` is logged and skipped (the other observers still run). Other
connections are never affected.

Building. A filter reaches the proxy from the configuration through an :class:`IFilterFactory`:
built-ins by short name, third-party factories by the ``name`` their ``twisted/plugins/``
dropin registers (found with :func:`twisted.plugin.getPlugins`), or by dotted path. Filters are
tested with :mod:`fwproxy.testing` (see ``docs/testing.md``).
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
        "The proxy's IResolver. A filter that needs a destination's addresses sets "
        "request.addresses from its answer, so the proxy connects to the addresses the "
        "filter saw (it does not resolve the name again)."
    )
    listening = Attribute(
        "The list of (host, port) the proxy listens on; filled in as its ports start "
        "listening (empty while filters are being built)."
    )
    authenticator = Attribute(
        "An fwproxy.auth.Authenticator turning Proxy-Authorization values into user names "
        "(through a twisted.cred Portal), or None when no authentication is configured."
    )


class IFilterFactory(IPlugin):
    """Builds a filter from its configuration. Put a provider of this interface at module
    level in a ``twisted/plugins/`` dropin to make the filter available by ``name``
    (``twisted.plugin.getPlugins`` finds it; this interface extends ``IPlugin`` for that).

    Example (a dropin ``twisted/plugins/acme_filters.py``)::

        @provider(IFilterFactory)
        class TaggerFactory:
            name = "acme.tagger"

            @staticmethod
            def build(options, context):
                return Tagger(options.get("tag", "acme"))
    """

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
    ``timeouts.request_header``.

    Example (close connections from one network)::

        @implementer(IConnectionFilter)
        class NoGuests:
            def clientConnected(self, client, local):
                return not client[0].startswith("10.99.")
    """

    def clientConnected(client, local):  # type: ignore[no-untyped-def]
        """A client connected.

        :param client: the client's ``(host, port)`` (for a PROXY-protocol listener, the
            original client's).
        :param local: the proxy's ``(host, port)`` that the client connected to.
        :return: ``True`` (or ``None``) to serve the connection, ``False`` to close it at once;
            or a Deferred firing with one of those.
        """


class IRequestFilter(Interface):
    """Sees every request head that is to be relayed (not CONNECT, not the proxy's own pages).

    Example (tag requests, refuse one path)::

        @implementer(IRequestFilter)
        class Tagger:
            def requestReceived(self, request):
                if request.path.startswith(b"/admin"):
                    return Response.text(403, "no admin pages")
                request.headers.set("X-Tag", "acme")
                return None
    """

    def requestReceived(request):  # type: ignore[no-untyped-def]
        """A request head arrived.

        The filter may modify ``request`` in place (``headers``, ``path``, ``notes``) to change
        what is sent upstream. It may also change the destination (``host``, ``port``,
        ``addresses``): the proxy then resolves it where needed and has it checked by the
        :class:`IDestinationCheck` filters (the access rules and the SSRF guard) again before
        connecting; the ``Host`` header is the filter's to set.

        :param request: a :class:`fwproxy.message.Request`.
        :return: ``None`` to let the request go on to the next filter and then upstream; or a
            :class:`fwproxy.message.Response` to answer the client with it instead (a denial
            is ``Response.text(403, ...)``) — later filters are then skipped; or a Deferred
            firing with one of those.
        """


class IConnectFilter(Interface):
    """Sees every CONNECT request.

    Example (tunnels only to port 443 of one domain)::

        @implementer(IConnectFilter)
        class OnlyAcme:
            def connectReceived(self, request):
                if request.port == 443 and request.host.endswith(".acme.example"):
                    return None
                return Response.text(403, "not there")
    """

    def connectReceived(request):  # type: ignore[no-untyped-def]
        """A CONNECT request arrived; ``request.host`` and ``request.port`` name the target.

        :return: as :meth:`IRequestFilter.requestReceived`: ``None`` to go on, a
            :class:`fwproxy.message.Response` to answer (the tunnel is then not made), or a
            Deferred firing with one of those. Changing ``host``, ``port`` or ``addresses``
            moves the tunnel, checked again as for a relayed request.
        """


class IDestinationCheck(Interface):
    """Decides whether a request may go to its destination: the access rules (the ``acl``
    filter provides it). A check that allows a request records what it allowed in
    ``request.checked`` (``request.checked = request.destination``). When, after all request
    (or CONNECT) hooks have run, ``request.destination`` differs from ``request.checked`` — a
    later filter changed the host, port or addresses — the proxy calls every check again
    before resolving and connecting; addresses that belonged to the old host are dropped first
    so that the new host is resolved. A CONNECT the rules postponed to its TLS ClientHello (an
    ``ssl_sni`` rule: ``request.notes["fwproxy.sni_postponed"]``) has every check called once
    more when the ClientHello arrives (:mod:`fwproxy.peek`), with ``request.notes["fwproxy.sni"]``
    set and ``request.addresses`` the one address connected to: a Response then refuses the
    tunnel (a TLS alert, no HTTP answer), and a changed destination has no effect.

    Example (only ever connect to one network)::

        @implementer(IRequestFilter, IConnectFilter, IDestinationCheck)
        class Fence:
            def checkDestination(self, request):
                if request.addresses is not None and all(
                    a.startswith("192.0.2.") for a in request.addresses
                ):
                    request.checked = request.destination
                    return None
                return Response.text(403, "fenced")

            requestReceived = connectReceived = checkDestination
    """

    def checkDestination(request):  # type: ignore[no-untyped-def]
        """Check ``request``'s destination again.

        :return: as :meth:`IRequestFilter.requestReceived` (``None`` allows, a Response
            answers instead, or a Deferred firing with one of those). May narrow
            ``request.addresses`` to the allowed ones.
        """


class IResponseFilter(Interface):
    """Sees every upstream response head before it is sent to the client.

    Example (hide a server header, replace error pages)::

        @implementer(IResponseFilter)
        class Tidy:
            def responseReceived(self, request, response):
                response.headers.remove("Server")
                if response.status >= 500:
                    return Response.text(502, "the origin failed")
                return None
    """

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


class IBodyTransform(Interface):
    """One message body being filtered: made per transaction by an :class:`IRequestBodyFilter`
    or :class:`IResponseBodyFilter` (that is where a filter keeps per-body state, such as the
    tail of the previous chunk). The proxy feeds it the body as it streams, chunk by chunk, in
    order, never the whole body at once, and sends on what it returns; :meth:`end` is called
    once after the last chunk. The bytes are the body as sent: a ``Content-Encoding`` (gzip,
    br) is not decoded, and chunked transfer coding is already removed. Trailers are dropped.

    Answers (of :meth:`data` and :meth:`end`): ``bytes`` or a list of ``bytes`` (zero or more
    pieces to pass on: ``b""`` or ``[]`` holds everything back for now); a
    :class:`fwproxy.message.Response` with a complete ``body`` to answer the client with
    instead of this message (a data-loss-prevention page: the proxy drops the upstream
    connection; possible only while no byte of the response has gone to the client, which for a
    filtered response means until this chain first passes on a non-empty piece: after that the
    client connection is cut); or a :class:`twisted.internet.defer.Deferred` firing with one
    of those. While a Deferred is pending the side producing this body is not read from (the
    origin for a response, the client for a request), so a slow filter never makes the proxy
    buffer. An exception, or a failing Deferred, ends the transaction as a failing hook does
    (``500`` if nothing was sent yet, else the connection is cut).

    The pieces a transform passes on go to the next body filter's transform, in configuration
    order, and then to the peer.

    Example (upper-case a body; the length stays)::

        @implementer(IBodyTransform)
        class Shout:
            keeps_length = True

            def data(self, chunk):
                return chunk.upper()

            def end(self):
                return b""
    """

    keeps_length = Attribute(
        "True if the transform passes on exactly as many bytes as it is given (a same-length "
        "substitution), so the message keeps its Content-Length; False if it may change the "
        "length: the proxy then drops Content-Length and sends the body chunked (close-"
        "delimited to an HTTP/1.0 client). A transform that says True and changes the "
        "length has the connection cut."
    )

    def data(chunk):  # type: ignore[no-untyped-def]
        """The next piece of the body (``bytes``, never empty).

        :return: the pieces to pass on, a Response, or a Deferred (see the class docstring).
        """

    def end():  # type: ignore[misc]
        """The body is complete: return what is left to pass on (a final piece, ``b""`` for
        nothing), a Response, or a Deferred of one of those. Not called when the transaction
        ended early (the peer went away, a timeout): drop what is held."""


class IRequestBodyFilter(Interface):
    """Sees the body of every relayed request that has one (Content-Length over 0, or chunked),
    plain HTTP and intercepted HTTPS alike.

    Example (refuse uploads that carry a marker; the body streams through unchanged)::

        @implementer(IRequestBodyFilter)
        class NoSecrets:
            def requestBody(self, request):
                return Scan(b"TOP-SECRET")  # an IBodyTransform with keeps_length = True
    """

    def requestBody(request):  # type: ignore[no-untyped-def]
        """A request body is about to stream upstream (after the request hooks allowed it,
        before its head is sent upstream).

        :param request: the :class:`fwproxy.message.Request` as it is sent upstream.
        :return: an :class:`IBodyTransform` for this body, or ``None`` to leave it alone
            (no per-chunk cost then). Must answer synchronously. A Response from the transform
            answers the client (unless the origin's answer has started) and closes the
            upstream connection.
        """


class IResponseBodyFilter(Interface):
    """Sees the body of every relayed response that has one: not the answer to a ``HEAD``,
    not ``204``, ``304`` or ``1xx``. Plain HTTP and intercepted HTTPS alike.

    Example (cap what the client receives)::

        @implementer(IResponseBodyFilter)
        class Cap:
            def responseBody(self, request, response):
                if response.headers.get(b"content-type", b"").startswith(b"video/"):
                    return None
                return Limit(10_000_000)  # an IBodyTransform
    """

    def responseBody(request, response):  # type: ignore[no-untyped-def]
        """A response head passed the :class:`IResponseFilter` hooks and its body is about to
        stream. The head is held back until the first filtered piece (or the end), so a
        transform may still replace the whole response until then.

        :param request: the :class:`fwproxy.message.Request` as it was sent upstream.
        :param response: the :class:`fwproxy.message.Response` head about to be sent; its
            headers may still be changed here.
        :return: an :class:`IBodyTransform` for this body, or ``None`` to leave it alone.
            Must answer synchronously.
        """


class ITransactionObserver(Interface):
    """Told about every finished transaction (access logs, metrics).

    Example (count results)::

        @implementer(ITransactionObserver)
        class Counter:
            def __init__(self):
                self.counts = collections.Counter()

            def transactionFinished(self, record):
                self.counts[record.result] += 1
    """

    def transactionFinished(record):  # type: ignore[no-untyped-def]
        """A transaction ended (answered, relayed, tunnelled, denied or failed).

        :param record: a :class:`fwproxy.record.TransactionRecord`; ``record.result`` is one
            of the codes in :mod:`fwproxy.record` (``TCP_MISS``, ``TCP_TUNNEL``, ...).
        :return: ignored. Must not block (buffer and write asynchronously); an exception is
            logged and the next observer still runs.
        """


class IFilterLifecycle(Interface):
    """Optional: a filter that holds resources (files, sockets, timers).

    Example::

        @implementer(ITransactionObserver, IFilterLifecycle)
        class FileLog:
            def startFilter(self):
                self.f = open("/var/log/acme.log", "a")

            def stopFilter(self):
                self.f.close()

            def reopen(self):
                self.stopFilter()
                self.startFilter()

            def transactionFinished(self, record):
                self.f.write(record.target + "\\n")
    """

    def startFilter():  # type: ignore[misc]
        """The proxy is starting to serve (its first port listens), or this filter replaces
        another on reload. Open resources here, not in the factory."""

    def stopFilter():  # type: ignore[misc]
        """The proxy is stopping (once its last connection has ended), or this filter was
        replaced on reload. Flush and release resources; may return a Deferred, which the proxy
        waits for (at most ``timeouts.drain`` seconds) before it exits."""

    def reopen():  # type: ignore[misc]
        """Re-open files (after log rotation: SIGUSR1)."""


class IResolver(Interface):
    """Turns host names into addresses for the proxy's connections and ``dst`` ACLs.

    Example (a fixed table, as in tests)::

        @implementer(IResolver)
        class Table:
            def resolve(self, host):
                return {"origin.test": ["127.0.0.1"]}.get(host, [])
    """

    def resolve(host):  # type: ignore[no-untyped-def]
        """Resolve ``host``.

        :param host: a host name or an IP address literal (returned as is).
        :return: a list of IP address strings, or a Deferred firing with one; an empty list or
            a failure means the name does not resolve (``502``).
        """


class IUpstreamSelector(Interface):
    """Chooses how an allowed request (relayed or CONNECT) reaches its destination: directly,
    or through one or more parent proxies (Smokescreen's ``UpstreamProxySelector``).

    Selectors are asked in configuration order once the request and destination hooks have
    allowed the request, before its destination is resolved; the first that answers decides.
    When none answers, the ``[routing]`` rules of the configuration decide (they are the
    built-in selector, :class:`fwproxy.routing.RoutingRules`, always asked last), and when no
    rule matches either, the request goes direct. Through parents, the proxy resolves and
    connects to the parents only, never to the destination itself: a relayed request goes to
    the parent in absolute form, a CONNECT becomes a CONNECT to the parent. The parents of a
    route are tried in order, skipping those marked down (``max_failures`` connection
    failures in a row, for ``retry_after`` seconds); when every one fails the client gets
    ``502`` (``504`` when the last timed out), never a direct connection.

    Example (one customer's traffic through its own parent)::

        @implementer(IUpstreamSelector)
        class PerCustomer:
            def __init__(self, parents):
                self.parents = parents  # context.config.parents: name -> Parent

            def selectUpstream(self, request):
                if request.user.startswith("acme-"):
                    return Route((self.parents["acme"], self.parents["backup"]))
                return None
    """

    def selectUpstream(request):  # type: ignore[no-untyped-def]
        """Choose the route of ``request``.

        :param request: the :class:`fwproxy.message.Request`, allowed (``method`` is
            ``"CONNECT"`` for a tunnel); ``addresses`` may still be ``None``. A selector may
            set them (for a direct route the proxy connects to them, as after a ``dst`` rule),
            but must not change ``host`` or ``port``: that is a request filter's job.
        :return: ``None`` for no opinion (the next selector decides); a
            :class:`fwproxy.routing.Route`: ``fwproxy.routing.DIRECT``, or
            ``Route((parent, ...))`` with :class:`fwproxy.parents.Parent` values, configured
            (``context.config.parents``) or made by the selector; or a Deferred firing with one
            of those. Anything else, or an exception, ends the transaction with a ``500`` as a
            failing hook does.
        """
