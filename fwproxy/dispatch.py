# -*- test-case-name: tests.test_protocol -*-
"""Which kind of transaction handles a request head.

The one place that knows the transaction kinds: the client protocol asks :func:`transaction_kind`
and builds what it names through the :class:`fwproxy.contracts.TransactionKind` contract. A new
kind (a peeked TLS tunnel, an upgrade) is added here and in its own module.
"""

from __future__ import annotations

from fwproxy.contracts import TransactionKind
from fwproxy.http1 import RequestHead
from fwproxy.local import LocalTransaction
from fwproxy.peek import PeekingConnectTransaction
from fwproxy.relay import RelayTransaction


def transaction_kind(head: RequestHead) -> TransactionKind:
    """The transaction class for ``head``: CONNECT (its tunnel peeked on ``[tunnel]
    peek_ports``), the proxy's own pages, or the relay."""
    if head.method == b"CONNECT":
        return PeekingConnectTransaction
    if head.target[:1] == b"/" or head.target == b"*":
        return LocalTransaction
    return RelayTransaction
