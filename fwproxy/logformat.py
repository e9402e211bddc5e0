# -*- test-case-name: tests.test_logformat -*-
"""Access-log line formats, sans-IO: a :class:`TransactionRecord` in, one line of text out.

- ``squid``: squid's native access.log
  (``time elapsed client code/status bytes method URL user hierarchy/peer type``);
- ``combined``: the Apache/NCSA combined format;
- ``json``: one JSON object per line.

A peeked tunnel's TLS server name (``TransactionRecord.sni``) is one more field at the end of
the squid and combined lines (``sni=NAME``, ``sni=-`` when the ClientHello named none; quoted
in the combined format), and only on those lines, so that tools reading the standard fields
by position are undisturbed; ``json`` has ``"sni"`` on every line (``null`` when not peeked).

A request relayed in report-only mode (``[access] mode = "report"``) that the rules would have
denied has the rule on its line likewise: ``would_deny=RULE`` at the end of the squid and
combined lines (escaped, quoted in the combined format), ``"would_deny"`` in ``json`` (``null``
otherwise).

A tunnel that ``[intercept]`` bumped ends its squid and combined lines with ``tls=bumped``
(``tls=rejected`` when the client refused fwproxy's certificate); ``json`` has ``"tls"`` on
every line (``null`` when not bumped).

Every field that a client controls is escaped: control characters, spaces inside the squid
format's space-separated fields, and quotes inside the combined format's quoted fields are
written as ``\\xHH`` (or ``\\"``), so a client cannot forge or split log lines.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

from fwproxy.record import TransactionRecord
from fwproxy.rules import WOULD_DENY

#: ``Request.notes`` key: what ``[intercept]`` did with a tunnel's TLS (``fwproxy.bump``)
TLS_NOTE = "fwproxy.tls"

# U+2028/U+2029 too: str.splitlines() (and JavaScript) end lines there
_CONTROL = re.compile(r"[\x00-\x20\x7f-\x9f\u2028\u2029\"\\]")
_QUOTED = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\"\\]")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _esc(m: re.Match[str]) -> str:
    c = m.group()
    if c in '"\\':
        return "\\" + c
    o = ord(c)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def field(value: str) -> str:
    """A space-free, control-free token for the squid format; ``-`` when empty."""
    if not value:
        return "-"
    if value.isprintable() and " " not in value and '"' not in value and "\\" not in value:
        return value  # the common case, without a regular expression
    return _CONTROL.sub(_esc, value)


def quoted(value: str) -> str:
    """Text safe inside double quotes on one line."""
    return _QUOTED.sub(_esc, value)


def hierarchy(r: TransactionRecord) -> str:
    """Squid's hierarchy field: ``HIER_DIRECT/IP``, ``FIRSTUP_PARENT/HOST`` or ``HIER_NONE/-``."""
    if r.hierarchy:
        return r.hierarchy
    return (
        f"HIER_DIRECT/{r.upstream.rpartition(':')[0].strip('[]')}" if r.upstream else "HIER_NONE/-"
    )


def squid(r: TransactionRecord) -> str:
    hier = (
        field(r.hierarchy)
        if r.hierarchy
        else f"HIER_DIRECT/{field(r.upstream.rpartition(':')[0].strip('[]'))}"
        if r.upstream
        else "HIER_NONE/-"
    )
    line = (
        f"{r.started:.3f} {int(r.duration * 1000):6d} {field(r.client)} "
        f"{r.result}/{r.status:03d} {r.bytes_out} {field(r.method)} {field(r.target)} "
        f"{field(r.user)} {hier} {field(r.content_type.partition(';')[0].strip())}"
    )
    if r.sni is not None:
        line += f" sni={field(r.sni)}"
    if r.notes and WOULD_DENY in r.notes:
        line += f" would_deny={field(str(r.notes[WOULD_DENY]))}"
    if r.notes and TLS_NOTE in r.notes:
        line += f" tls={field(str(r.notes[TLS_NOTE]))}"
    return line


def _clf_time(t: float) -> str:
    lt = time.localtime(t)
    off = lt.tm_gmtoff // 60
    sign = "+" if off >= 0 else "-"
    return (
        f"{lt.tm_mday:02d}/{_MONTHS[lt.tm_mon - 1]}/{lt.tm_year}:"
        f"{lt.tm_hour:02d}:{lt.tm_min:02d}:{lt.tm_sec:02d} {sign}{abs(off) // 60:02d}{abs(off) % 60:02d}"
    )


def combined(r: TransactionRecord) -> str:
    request = quoted(f"{r.method} {r.target} HTTP/{r.version}")
    line = (
        f'{field(r.client)} - {field(r.user)} [{_clf_time(r.started)}] "{request}" '
        f'{r.status} {r.bytes_out} "{quoted(r.referer) or "-"}" "{quoted(r.user_agent) or "-"}"'
    )
    if r.sni is not None:
        line += f' "sni={quoted(r.sni) or "-"}"'
    if r.notes and WOULD_DENY in r.notes:
        line += f' "would_deny={quoted(str(r.notes[WOULD_DENY]))}"'
    if r.notes and TLS_NOTE in r.notes:
        line += f' "tls={quoted(str(r.notes[TLS_NOTE]))}"'
    return line


def as_json(r: TransactionRecord) -> str:
    return json.dumps(
        {
            "time": round(r.started, 3),
            "duration_ms": int(r.duration * 1000),
            "client": r.client,
            "user": r.user,
            "method": r.method,
            "target": r.target,
            "version": r.version,
            "status": r.status,
            "result": r.result,
            "bytes_in": r.bytes_in,
            "bytes_out": r.bytes_out,
            "upstream": r.upstream,
            "hierarchy": hierarchy(r),
            "content_type": r.content_type,
            "referer": r.referer,
            "user_agent": r.user_agent,
            "sni": r.sni,
            "would_deny": r.notes.get(WOULD_DENY),
            "tls": r.notes.get(TLS_NOTE),
        },
        separators=(",", ":"),
    )


FORMATS: dict[str, Callable[[TransactionRecord], str]] = {
    "squid": squid,
    "combined": combined,
    "json": as_json,
}
