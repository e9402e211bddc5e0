# -*- test-case-name: tests.test_squidconf_directives -*-
"""``http_port`` and ``https_port`` as ``[proxy] listen`` endpoint strings.

``http_port [ADDR:]PORT [options]``: ``tcp:PORT`` (Squid listens on every address), with
``interface=ADDR`` when one is given; ``require-proxy-header`` puts ``haproxy:`` in front;
``https_port`` is an ``ssl:`` listener with the ``tls-cert=``/``tls-key=`` files. ``name=``
is remembered for ``myportname`` ACLs. Interception and acceleration modes change what the
port does to requests, and fwproxy has neither: an error.
"""

from __future__ import annotations

import re

from fwproxy.squidconf.parse import Directive
from fwproxy.squidconf.report import Report

_ADDR_PORT = re.compile(
    r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]:|(?P<v4>[0-9.]+|[A-Za-z0-9.-]+):)?(?P<port>\d+)$"
)
_MODES = ("intercept", "tproxy", "accel", "transparent", "vhost", "vport")
_IGNORED = ("ssl-bump", "generate-host-certificates", "dynamic_cert_mem_cache_size")


class Ports:
    """The listeners of a squid.conf and their names."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.listen: list[str] = []
        #: ``name=`` of each port (default: the port as written), for ``myportname``
        self.names: dict[str, int] = {}
        #: the CA file of an ``ssl-bump`` port (``tls-cert=``), if any
        self.bump_cert = ""
        #: a translated port has ``ssl-bump`` (Squid's ``ssl_bump`` applies to no other port)
        self.bumping = False
        #: the file has ``http_port``/``https_port`` lines (translated or not)
        self.seen = False
        #: the ``require-proxy-header`` ports (their PROXY senders: ``proxy_protocol_access``)
        self.proxied: list[Directive] = []

    def port(self, d: Directive) -> None:
        self.seen = True
        if not d.args:
            self.report.error(d, "names no port")
            return
        m = _ADDR_PORT.match(d.args[0])
        if not m or not 0 < int(m["port"]) <= 65535:
            self.report.error(d, f"{d.args[0]!r} is not [ADDRESS:]PORT")
            return
        port = int(m["port"])
        options = dict(a.partition("=")[::2] for a in d.args[1:])
        modes = [o for o in options if o in _MODES]
        if modes:
            self.report.untranslated(
                d, f"{modes[0]}: fwproxy is a forward proxy only (no interception/acceleration)"
            )
            return
        self.names[options.get("name") or d.args[0]] = port
        if "ssl-bump" in options:
            self.bumping = True
            self.bump_cert = options.get("tls-cert") or options.get("cert") or self.bump_cert
        if m["v6"]:
            endpoint = f"tcp6:{port}:interface=" + m["v6"].replace(":", "\\:")
        elif m["v4"]:
            endpoint = f"tcp:{port}:interface={m['v4']}"
        else:
            endpoint = f"tcp:{port}"
        if d.name == "https_port":
            endpoint = self._ssl(d, options, endpoint)
            if not endpoint:
                return
        if "require-proxy-header" in options:
            endpoint = "haproxy:" + endpoint
            self.proxied.append(d)
        for o in options:
            if o not in ("name", "require-proxy-header", "tls-cert", "cert", "tls-key", "key"):
                if o in _IGNORED:
                    self.report.note(d, f"{o}: see ssl_bump for what fwproxy does with TLS")
                else:
                    self.report.skip(d, f"option {o} has no fwproxy equivalent")
        self.listen.append(endpoint)

    def _ssl(self, d: Directive, options: dict[str, str], endpoint: str) -> str:
        cert = options.get("tls-cert") or options.get("cert")
        key = options.get("tls-key") or options.get("key") or cert
        if not cert:
            self.report.error(d, "an https_port needs tls-cert=FILE")
            return ""
        return "ssl" + endpoint[endpoint.index(":") :] + f":privateKey={key}:certKey={cert}"
