# -*- test-case-name: tests.test_protocol -*-
"""Requests addressed to the proxy itself (origin-form): the health check and a usage text.

``GET /healthz`` (and ``HEAD``) answers ``200 ok`` before any rule and is not logged, so load
balancers can check the traffic port every few seconds without drowning the access log; any other
origin-form request gets ``400`` with a line saying how to use a forward proxy.
"""

from __future__ import annotations

from fwproxy.message import Response
from fwproxy.transaction import USAGE, Transaction

HEALTH_PATHS = (b"/healthz",)


class LocalTransaction(Transaction):
    """A request addressed to the proxy itself: health check or usage text."""

    def start(self) -> None:
        path = self.head.target.split(b"?", 1)[0]
        if path in HEALTH_PATHS and self.head.method in (b"GET", b"HEAD"):
            self.logged = False
            self.answer(Response.text(200, "ok"))
        else:
            self.answer(Response.text(400, USAGE), close=True)
