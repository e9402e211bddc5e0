"""The core's declared contracts (fwproxy.contracts) are what the parts really use.

mypy checks the types (``ProxyProtocol`` as a ``ClientConnection``, ``ProxyFactory`` as
``ProxyServices``); these tests check the boundaries a type checker does not: transactions import
neither the protocol nor the factory, and the dispatch is the one place that names the kinds.
"""

from __future__ import annotations

import ast
from pathlib import Path

import fwproxy
from fwproxy.dispatch import transaction_kind
from fwproxy.http1 import RequestHead
from fwproxy.local import LocalTransaction
from fwproxy.relay import RelayTransaction
from fwproxy.tunnel import ConnectTransaction

PACKAGE = Path(fwproxy.__file__).parent
TRANSACTION_MODULES = [
    "transaction",
    "destination",
    "relay",
    "response",
    "tunnel",
    "local",
]


def _imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_transactions_know_the_connection_and_proxy_only_by_contract() -> None:
    for module in TRANSACTION_MODULES:
        imported = _imports(module)
        assert "fwproxy.protocol" not in imported, module
        assert "fwproxy.factory" not in imported, module
        assert "fwproxy.dispatch" not in imported, module
        assert "twisted.internet.reactor" not in imported, module


def test_the_protocol_names_no_transaction_kind() -> None:
    imported = _imports("protocol")
    for kind in ("fwproxy.relay", "fwproxy.tunnel", "fwproxy.local"):
        assert kind not in imported


def _head(method: bytes, target: bytes) -> RequestHead:
    return RequestHead(method, target, "1.1", [], True, False, None)


def test_dispatch() -> None:
    assert issubclass(transaction_kind(_head(b"CONNECT", b"a:443")), ConnectTransaction)
    assert transaction_kind(_head(b"GET", b"/healthz")) is LocalTransaction
    assert transaction_kind(_head(b"OPTIONS", b"*")) is LocalTransaction
    assert transaction_kind(_head(b"GET", b"http://a/")) is RelayTransaction
