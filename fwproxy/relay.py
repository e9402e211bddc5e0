# -*- test-case-name: tests.test_relay -*-
"""The HTTP relay: one absolute-form request forwarded upstream and its response streamed back.

Steps: parse the target into a :class:`Request` (origin-form path, Host from the URI, hop-by-hop
fields removed); run the request filters; find the destination (:mod:`fwproxy.destination`);
take an idle pooled connection or connect; send the head and stream the body (re-chunked when
the client sent it chunked); the response side (:mod:`fwproxy.response`) streams the answer
back. Flow control both ways: the upstream transport is the producer of the client's, and the
client connection (through its pause reasons) the producer of the upstream's.

The transaction's progress is one value, :attr:`RelayTransaction.state`, moving forward only::

    FILTERING -> CONNECTING -> SENDING -> AWAITING -> RESPONDING
                           \\-------------/

(``SENDING`` is skipped when the whole request has arrived before the connection.) Whether the
request body is still streaming upstream is separate (:attr:`RelayTransaction.uploading`): an
origin may answer before it has read the whole body.
"""

from __future__ import annotations

import enum
from typing import Any

from mypy_extensions import mypyc_attr
from twisted.internet.defer import CancelledError

from fwproxy import http1, upgrade, writes
from fwproxy.bodyrelay import FilteredResponseRelay, RequestBody
from fwproxy.contracts import ClientConnection, ProxyServices
from fwproxy.destination import RoutedTransaction
from fwproxy.http1 import BODY, END, ERROR, ProtocolError, RequestHead
from fwproxy.message import Headers, Request, Response
from fwproxy.parents import to_parent
from fwproxy.record import TCP_MISS, TCP_MISS_ABORTED
from fwproxy.response import ResponseRelay
from fwproxy.target import http_form, parse_absolute
from fwproxy.transaction import USAGE
from fwproxy.upstream import UpstreamProtocol


class State(enum.IntEnum):
    """Where a relayed request stands (see the module docstring)."""

    FILTERING = 0
    CONNECTING = 1
    SENDING = 2
    AWAITING = 3
    RESPONDING = 4


# module-level names: an enum member looked up on its class costs ~170 ns in Python 3.11, and
# these are read several times per request
FILTERING, CONNECTING, SENDING, AWAITING, RESPONDING = State

_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


def _with_host(fields: list[tuple[bytes, bytes]], host_header: bytes) -> list[tuple[bytes, bytes]]:
    """``fields`` with exactly one Host, the URI's, where the first one stood."""
    placed = duplicate = False
    for i, (k, _) in enumerate(fields):
        if len(k) == 4 and k.lower() == b"host":
            if not placed:
                fields[i] = (k, host_header)
                placed = True
            else:
                fields[i] = (b"", b"")
                duplicate = True
    if duplicate:
        return [f for f in fields if f[0]]
    if not placed:
        fields.insert(0, (b"Host", host_header))
    return fields


def _retryable(txn: RelayTransaction, conn: UpstreamProtocol) -> bool:
    """Whether ``txn`` failed on a kept-alive connection before anything happened on it."""
    return (
        conn.reused
        and txn.status == 0
        and not txn.response.started
        and conn.reader is not None
        and not conn.reader.started
        and txn.request_done
        and not txn.head.has_body
        and txn.head.method in _IDEMPOTENT
    )


def _parse_target(head: RequestHead) -> tuple[str, str, int, bytes, bytes]:
    """:func:`fwproxy.target.parse_absolute` of ``head``'s target, which a ``ws://`` or
    ``wss://`` one is rewritten to ``http://`` or ``https://`` first: relayed, checked by the
    rules and logged as that."""
    if head.target[:1] in b"wW":
        head.target = http_form(head.target)
    return parse_absolute(head.target)


def _request_fields(txn: RelayTransaction) -> list[tuple[bytes, bytes]]:
    """The end-to-end fields of ``txn``'s request head; an upgrade's are fwproxy.upgrade's."""
    head = txn.head
    if head.upgrade:
        return upgrade.request_fields(txn)
    return http1.end_to_end(head.headers)


@mypyc_attr(allow_interpreted_subclasses=True)
class RelayTransaction(RoutedTransaction):
    """One relayed request/response."""

    def __init__(self, conn: ClientConnection, proxy: ProxyServices, head: RequestHead) -> None:
        super().__init__(conn, proxy, head)
        self.state = FILTERING
        self.parent = None
        self.upstream: UpstreamProtocol | None = None
        relay = FilteredResponseRelay if proxy.chain.response_body else ResponseRelay
        self.response = relay(self)
        self.body_filter: RequestBody | None = None  # request body filters that took the body
        self._retried = False
        #: the request body is being streamed upstream
        self.uploading = False
        self.result = TCP_MISS

    # -- request side --------------------------------------------------------------------
    def start(self) -> None:
        head = self.head
        try:
            scheme, host, port, path, host_header = _parse_target(head)
        except http1.ProtocolError as e:
            self.answer(Response.text(e.status, f"fwproxy: {e.message}. {USAGE}"), close=True)
            return
        self.request = request = Request(
            head.method.decode("latin-1"),
            head.target.decode("latin-1"),
            host,
            port,
            path,
            Headers._adopt(_with_host(_request_fields(self), host_header)),
            head.version,
            self.conn.client,
            scheme,
        )
        request.credentials = http1.proxy_credentials(head.headers)
        limit = self.proxy.config.limits.max_body_size
        if limit and head.content_length is not None and head.content_length > limit:
            self.answer(Response.text(413, f"fwproxy: request body over {limit} bytes"), close=True)
            return
        self.run_filters(self.proxy.chain.request, self.destination_decided)

    def deciding(self) -> bool:
        return self.state == FILTERING

    def routing(self) -> None:
        self.state = CONNECTING

    def connect_upstream(self) -> None:
        req = self.req
        pool = self.proxy.pool
        if self.parent is None:
            key = (req.scheme, req.host, req.port)
            addresses = req.addresses or []
        else:
            key, addresses = self.parent.key, self.parent_addresses
        conn = pool.take_idle(key, addresses)
        if conn is not None:
            self._connected(conn)
        elif pool.at_limit(key):
            self.arm_connect()
            d = pool.wait(key, addresses)
            self._waiting = d
            d.addCallback(self._handed).addErrback(lambda f: f.trap(CancelledError))
        else:
            self._connect(addresses[0])

    def _handed(self, conn: UpstreamProtocol | None) -> None:
        """Waited for a connection to the origin: got one, or room for a new one."""
        self._waiting = None
        if self.done:
            if conn is not None:
                self.proxy.pool.release(conn)
            return
        if conn is not None:
            self._connected(conn)
        else:
            self.connect_upstream()

    def _connect(self, address: str) -> None:
        self.arm_connect()
        req = self.req
        parent = self.parent
        if parent is None:
            key = (req.scheme, req.host, req.port)
            name = req.host if req.scheme == "https" else None
        else:
            key, name = parent.key, parent.tls_name
        d = self.proxy.pool.connect(key, address, self.proxy.config.timeouts.connect, name)
        self._waiting = d
        d.addCallbacks(self._connected, self.connect_failed)

    def _connected(self, conn: UpstreamProtocol) -> None:
        self._waiting = None
        if self.done:
            self.proxy.pool.release(conn)
            return
        self.upstream = conn
        self.upstream_address = conn.address
        head = self.head
        conn.begin(self.response, head.method)
        req = self.req
        fields = req.headers.fields()
        target = req.path
        if self.parent is not None:
            self.parent_connected(not conn.reused)
            target, fields = to_parent(self.parent, req, fields)
        if self.proxy.chain.request_body and head.has_body:
            self.body_filter, fields = RequestBody.start(self, req, head, fields)
        if head.chunked or (self.body_filter is not None and self.body_filter.chunked):
            fields = [*fields, (b"Transfer-Encoding", b"chunked")]
        writes.write(conn.transport, http1.request_head(head.method, target, fields))
        if self.request_done:
            self._request_sent()
            return
        self.deadline.restart(self.proxy.config.timeouts.read, self._read_timeout)
        self.state = SENDING
        self.uploading = True
        if head.has_body:
            conn.transport.registerProducer(self.conn.upstream_producer, True)
        self.conn.process()

    def accepts(self, kind: int) -> bool:
        if kind == ERROR:
            return not self.request_done
        if self.uploading or self.discarding:
            held = self.body_filter is not None and self.body_filter.waiting
            return (kind == BODY or kind == END) and not held
        return kind == END and not self.head.has_body

    def client_event(self, kind: int, payload: Any) -> None:
        if not self.uploading:
            super().client_event(kind, payload)
            return
        assert self.upstream is not None
        transport = self.upstream.transport
        if kind == BODY:
            self.bytes_in += len(payload)
            self.deadline.touch()
            limit = self.proxy.config.limits.max_body_size
            if limit and self.bytes_in - self.head.size > limit:
                self._drop_upstream()
                self.client_error(ProtocolError(413, f"request body over {limit} bytes"))
                return
            if self.body_filter is not None:
                self.body_filter.data(payload)
            elif self.head.chunked:
                transport.writeSequence(http1.chunk(payload))
            else:
                transport.write(payload)
        elif kind == END:
            self.request_done = True
            if self.body_filter is not None:
                self.body_filter.end()  # hands the END back once the filters have ended
                return
            self.uploading = False
            if self.head.chunked:
                transport.write(http1.LAST_CHUNK)
            if self.head.has_body:
                transport.unregisterProducer()
                self.conn.resume("upstream")
            self._request_sent()
        else:
            self.client_error(payload)

    def _request_sent(self) -> None:
        if self.state < AWAITING:
            self.state = AWAITING
            up = self.upstream
            if up is not None and up.reader is not None and not up.reader.started:
                timeout = self.proxy.config.timeouts.upstream_first_byte
                self.deadline.restart(timeout, self._first_byte_timeout)

    def _first_byte_timeout(self) -> None:
        self.error(504, f"{self.req.authority} did not answer in time")

    def _read_timeout(self) -> None:
        self.error(504, f"{self.req.authority}: no data for too long")

    # -- what the response side tells (fwproxy.response.Exchange) -------------------------
    def response_started(self) -> None:
        self.state = RESPONDING
        self.deadline.restart(self.proxy.config.timeouts.read, self._read_timeout)

    def replace_response(self, answer: Response) -> None:
        """A response filter answered instead: the upstream body is not wanted."""
        self._drop_upstream()
        self.answer(answer, close=not self.request_done)

    def response_ended(self, keep_alive: bool) -> None:
        conn, self.upstream = self.upstream, None
        if conn is not None:
            if self.request_done and not self.uploading:
                self.proxy.pool.release(conn)
            else:
                self.proxy.pool.discard(conn)  # the request body was not all sent
        self.finish(keep_alive)

    def upstream_failed(self, error: ProtocolError) -> None:
        if self.done:
            return
        conn = self.upstream
        if conn is not None and not self._retried and _retryable(self, conn):
            # a kept-alive connection the origin had closed: try once on a fresh one
            self._retried = True
            self.upstream = None
            self.proxy.pool.discard(conn)
            self.state = CONNECTING
            self.restart_connect()
            self._connect(self.hop_addresses()[0])
            return
        self.error(error.status, error.message)

    # -- ending ---------------------------------------------------------------------------
    def error(self, status: int, message: str) -> None:
        """Upstream trouble: answer ``status`` if nothing was sent yet, else cut the response."""
        if self.done:
            return
        self._drop_upstream()
        if self.status == 0:
            self.answer(
                Response.text(status, f"fwproxy: {message}", TCP_MISS), close=not self.request_done
            )
        else:
            self.result = TCP_MISS_ABORTED
            self.abort()

    def flush(self) -> None:
        self.response.flush()

    def _drop_upstream(self) -> None:
        self.response.stop_streaming()
        conn, self.upstream = self.upstream, None
        if conn is not None:
            self.proxy.pool.abort(conn)

    def client_lost(self) -> None:
        if not self.done:
            self.result = TCP_MISS_ABORTED
        super().client_lost()

    def cleanup(self) -> None:
        self.flush()
        super().cleanup()
        if self.upstream is not None:
            self._drop_upstream()
        self.response.close()
        self.conn.resume("upstream")
