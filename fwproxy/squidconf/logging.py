# -*- test-case-name: tests.test_squidconf_directives -*-
"""``access_log`` and ``logformat`` as ``[log]``: a file (or none), and a format among
fwproxy's built-ins: ``squid``, ``combined``, or ``json`` where a custom format is shaped as a
JSON object; any other custom format becomes its nearest built-in, with a note."""

from __future__ import annotations

from fwproxy.squidconf.parse import Directive
from fwproxy.squidconf.report import Report

_BUILTIN = {
    "squid": "squid",
    "combined": "combined",
    "common": "combined",
    "referrer": "combined",
    "useragent": "combined",
}


class Logging:
    """The ``[log]`` table of a squid.conf: the first ``access_log``, its format resolved
    against the ``logformat`` lines before it."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.formats: dict[str, str] = {}
        self.log: dict[str, str] = {}

    def logformat(self, d: Directive) -> None:
        if len(d.args) < 2:
            self.report.error(d, "expected logformat NAME FORMAT")
            return
        self.formats[d.args[0]] = " ".join(d.args[1:])

    def access_log(self, d: Directive) -> None:
        if not d.args:
            self.report.error(d, "names no log")
            return
        if self.log:
            self.report.skip(d, "fwproxy writes one access log (the first access_log is used)")
            return
        target = d.args[0]
        if target == "none":
            self.log["access"] = "/dev/null"
            self.report.note(d, "none: fwproxy always logs; written to /dev/null")
            return
        for prefix in ("stdio:", "daemon:"):
            if target.startswith(prefix):
                target = target[len(prefix) :]
        if ":" in target.split("/")[0] and target.split(":")[0] in ("syslog", "udp", "tcp"):
            self.report.skip(d, f"{target}: fwproxy logs to a file or standard output")
            return
        self.log["access"] = target
        rest = list(d.args[1:])
        fmt = "squid"
        if rest and "=" not in rest[0] and (rest[0] in _BUILTIN or rest[0] in self.formats):
            fmt = rest.pop(0)  # any other word is the first ACL, as in Squid
        for a in list(rest):
            if a.startswith("logformat="):
                fmt = a.split("=", 1)[1]
                rest.remove(a)
        self.log["format"] = self._format(d, fmt)
        acls = [a for a in rest if "=" not in a]
        if acls:
            self.report.skip(d, f"logging only some requests ({' '.join(acls)}): fwproxy logs all")

    def _format(self, d: Directive, name: str) -> str:
        if name in _BUILTIN:
            if name != _BUILTIN[name]:
                self.report.note(d, f"format {name} written as fwproxy's {_BUILTIN[name]}")
            return _BUILTIN[name]
        spec = self.formats.get(name)
        if spec is None:
            self.report.note(d, f"unknown log format {name!r}: squid's format used")
            return "squid"
        if spec.lstrip().startswith("{"):
            self.report.note(
                d, f"logformat {name} is JSON-shaped: fwproxy's json format used (its own fields)"
            )
            return "json"
        near = (
            "combined" if ("%{Referer}" in spec or "%>a %[ui" in spec or "%tl" in spec) else "squid"
        )
        self.report.note(d, f"custom logformat {name}: fwproxy's nearest built-in, {near}, used")
        return near
