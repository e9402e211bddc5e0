# -*- test-case-name: tests.test_squidconf_directives -*-
"""The header directives as ``[headers]``: ``forwarded_for`` (same words), ``via``,
``visible_hostname`` (the name in Via), ``request_header_access``/``reply_header_access``
``NAME deny all`` (removed), ``request_header_add NAME VALUE``. Rules that depend on other ACLs
(a header removed for some requests only) have no equivalent: they change headers, not who
is let through, so they are warnings."""

from __future__ import annotations

import re

from fwproxy.squidconf.parse import Directive
from fwproxy.squidconf.report import Report

_FORWARDED_FOR = ("on", "off", "transparent", "truncate", "delete")
#: an HTTP token (a header name, Via's name)
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class Headers:
    """The ``[headers]`` table of a squid.conf's header directives."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.headers: dict[str, object] = {}

    def forwarded_for(self, d: Directive) -> None:
        if len(d.args) != 1 or d.args[0] not in _FORWARDED_FOR:
            self.report.error(d, f"expected one of {', '.join(_FORWARDED_FOR)}")
            return
        self.headers["forwarded_for"] = d.args[0]

    def via(self, d: Directive) -> None:
        if len(d.args) != 1 or d.args[0] not in ("on", "off"):
            self.report.error(d, "expected on or off")
            return
        self.headers["via"] = d.args[0] == "on"

    def visible_hostname(self, d: Directive) -> None:
        if len(d.args) != 1 or not _TOKEN.match(d.args[0]):
            self.report.error(d, "expected one host name")
            return
        self.headers["via_name"] = d.args[0]
        self.report.note(d, "used as the name in Via (fwproxy's error pages do not name it)")

    def header_access(self, d: Directive) -> None:
        if len(d.args) < 3 or d.args[1] not in ("allow", "deny"):
            self.report.error(d, "expected NAME allow|deny ACL...")
            return
        name, action, acls = d.args[0], d.args[1], d.args[2:]
        if not _TOKEN.match(name):
            self.report.error(d, f"{name!r} is not a header name")
            return
        if action == "allow":
            if acls != ("all",):
                self.report.skip(d, "allow lines for some requests only")
            return
        if name.lower() in ("all", "other"):
            self.report.skip(d, "a list of the headers let through has no fwproxy equivalent")
            return
        if acls != ("all",):
            self.report.skip(d, "fwproxy removes a header from every message or none")
            return
        key = "remove_request" if d.name == "request_header_access" else "remove_response"
        removed = self.headers.setdefault(key, [])
        assert isinstance(removed, list)
        removed.append(name)

    def header_add(self, d: Directive) -> None:
        if len(d.args) < 2:
            self.report.error(d, "expected NAME VALUE [ACL...]")
            return
        name, value = d.args[0], d.args[1]
        if not _TOKEN.match(name):
            self.report.error(d, f"{name!r} is not a header name")
            return
        if len(d.args) > 2:
            self.report.skip(d, "fwproxy adds a header to every request or none")
            return
        if "%" in value:
            self.report.note(d, "Squid's % codes are not expanded by fwproxy")
        added = self.headers.setdefault("add_request", {})
        assert isinstance(added, dict)
        added[name] = value.strip('"')
