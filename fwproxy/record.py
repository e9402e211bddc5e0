# -*- test-case-name: tests.test_logformat -*-
"""The record of one finished transaction, as access loggers and metrics see it."""

from __future__ import annotations

from dataclasses import dataclass, field

from mypy_extensions import mypyc_attr

# Squid-style result codes, public names for filters, observers and log readers: what
# ``TransactionRecord.result`` holds (a filter's Response may carry any of them in
# ``result_code``). They keep Squid's meanings so that log tooling written for Squid reads them.

#: a request relayed to the origin and its response relayed back
TCP_MISS = "TCP_MISS"
#: a relayed request that ended early: the client or the origin went away mid-response
TCP_MISS_ABORTED = "TCP_MISS_ABORTED"
#: a CONNECT tunnel that was established (and has ended, whichever side closed it)
TCP_TUNNEL = "TCP_TUNNEL"
#: a CONNECT whose client went away before the tunnel ended cleanly
TCP_TUNNEL_ABORTED = "TCP_TUNNEL_ABORTED"
#: denied by the access rules or authentication (403, 407, 429)
TCP_DENIED = "TCP_DENIED"
#: answered by the proxy itself without going upstream (a malformed request, a timeout)
NONE_NONE = "NONE_NONE"

#: every result code fwproxy logs
RESULT_CODES = (TCP_MISS, TCP_MISS_ABORTED, TCP_TUNNEL, TCP_TUNNEL_ABORTED, TCP_DENIED, NONE_NONE)


@dataclass
@mypyc_attr(allow_interpreted_subclasses=True)
class TransactionRecord:
    """One request and its outcome.

    ``client`` is the client's address as the transport reports it; ``user`` the authenticated
    user ("" when none); ``method`` and ``target`` as the client sent them (``target`` is the
    absolute URI or the CONNECT authority); ``status`` the status sent to the client (0 if none
    was sent); ``bytes_in`` the bytes received from the client for this transaction (head and
    body, or tunnel bytes); ``bytes_out`` the bytes sent to the client; ``started`` the wall-clock
    time (seconds since the epoch, from the proxy's clock) the request head arrived;
    ``duration`` seconds until the transaction ended; ``upstream`` the ``host:port`` the proxy
    connected to, or ""; ``result`` the squid-style result code; ``version`` the client's HTTP
    version; ``content_type`` of the response, ``referer`` and ``user_agent`` of the request
    (for the combined format); ``notes`` what filters left in ``Request.notes``; ``sni`` the
    TLS server name of a peeked tunnel's ClientHello ("" when it named none), None for
    everything else (:mod:`fwproxy.peek`).
    """

    client: str
    method: str
    target: str
    status: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    started: float = 0.0
    duration: float = 0.0
    upstream: str = ""
    result: str = NONE_NONE
    user: str = ""
    version: str = "1.1"
    content_type: str = ""
    referer: str = ""
    user_agent: str = ""
    notes: dict[str, object] = field(default_factory=dict)
    sni: str | None = None
    #: through a parent proxy, Squid's hierarchy code and the parent's host
    #: (``FIRSTUP_PARENT/proxy.example``); "" otherwise, which the log formats write as
    #: ``HIER_DIRECT/`` and the upstream address, or ``HIER_NONE/-`` when there was none
    hierarchy: str = ""
