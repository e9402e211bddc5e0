"""The plugin contracts (fwproxy.interfaces) are complete and the built-ins keep them."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyObject

from fwproxy import interfaces
from fwproxy.config import loads
from fwproxy.filters.accesslog import AccessLogFactory
from fwproxy.filters.acl import AclFilterFactory
from fwproxy.filters.headers import HeadersFilterFactory
from fwproxy.plugins import FilterContext

HOOKS = [
    interfaces.IConnectionFilter,
    interfaces.IRequestFilter,
    interfaces.IConnectFilter,
    interfaces.IDestinationCheck,
    interfaces.IResponseFilter,
    interfaces.IRequestBodyFilter,
    interfaces.IResponseBodyFilter,
    interfaces.IBodyTransform,
    interfaces.ITransactionObserver,
    interfaces.IFilterLifecycle,
    interfaces.IResolver,
]


def test_every_hook_interface_documents_its_methods_with_an_example() -> None:
    for iface in HOOKS:
        assert "Example" in (iface.__doc__ or ""), iface.__name__
        for name in iface.names():
            doc = iface[name].getDoc()
            assert doc and len(doc) > 40, f"{iface.__name__}.{name}"


def test_the_module_says_what_happens_when_a_hook_fails() -> None:
    doc = interfaces.__doc__ or ""
    assert "500" in doc and "raises" in doc and "Deferred fails" in doc


def test_the_builtins_provide_what_they_claim() -> None:
    config = loads('[acl.l]\nsrc = ["127.0.0.0/8"]\n[access]\nrules = ["allow l", "deny all"]\n')
    context = FilterContext(MemoryReactorClock(), config, None)
    acl = AclFilterFactory.build({}, context)
    for iface in (
        interfaces.IRequestFilter,
        interfaces.IConnectFilter,
        interfaces.IDestinationCheck,
    ):
        verifyObject(iface, acl)
    headers = HeadersFilterFactory.build({}, context)
    verifyObject(interfaces.IRequestFilter, headers)
    log = AccessLogFactory.build({}, context)
    verifyObject(interfaces.ITransactionObserver, log)
    verifyObject(interfaces.IFilterLifecycle, log)
