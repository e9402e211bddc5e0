# -*- test-case-name: tests.test_squidconf_acls -*-
"""Squid's ACL values in fwproxy's spelling: addresses, networks and ranges as CIDRs, regular
expressions (POSIX classes, ``-i``), ``time`` specifications and Squid's time units.

Each function takes Squid's text and returns fwproxy's, or raises :class:`ValueError` with a
message naming the value and what is wrong with it.
"""

from __future__ import annotations

import ipaddress
import re

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Squid's ``src``/``dst`` words for every address (``all``) or every address of one family
_EVERYTHING = {
    "all": ["0.0.0.0/0", "::/0"],
    "ipv4": ["0.0.0.0/0"],
    "ipv6": ["::/0"],
    # old spellings of "all" that Squid still accepts (with an error line)
    "0/0": ["0.0.0.0/0", "::/0"],
    "0.0.0.0/0": ["0.0.0.0/0", "::/0"],
    "0.0.0.0/0.0.0.0": ["0.0.0.0/0", "::/0"],
    "0.0.0.0-255.255.255.255": ["0.0.0.0/0", "::/0"],
    "0.0.0.0-0.0.0.0/0": ["0.0.0.0/0", "::/0"],
}

_V4 = re.compile(r"^[0-9.]+$")


def _address(text: str, whole: str) -> IPAddr:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{whole!r} is not an IP address, network or range") from None


def _mask(text: str, version: int, whole: str) -> int:
    """A prefix length from ``24`` or (IPv4) ``255.255.255.0``, as Squid's DecodeMask."""
    if text.isdigit():
        bits = int(text)
        if bits > (32 if version == 4 else 128):
            raise ValueError(f"{whole!r} has a mask longer than the address")
        return bits
    if version == 4 and _V4.match(text):
        try:
            return ipaddress.IPv4Network(f"0.0.0.0/{text}").prefixlen
        except ValueError:
            pass
    raise ValueError(f"{whole!r} has an invalid netmask {text!r}")


def networks(value: str) -> tuple[list[str], str | None]:
    """``(CIDRs, note)`` for one ``src``/``dst`` value: ``a``, ``a/bits``, ``a/255.0.0.0``,
    ``a-b`` and ``a-b/mask`` (a client ``x`` is in the range when ``x & mask`` is between the
    masked ends, as Squid compares), ``all``, ``ipv4``, ``ipv6``. The note says when a mask
    cuts bits off the address (Squid warns, and matches the masked network)."""
    if value.lower() in _EVERYTHING:
        return list(_EVERYTHING[value.lower()]), None
    body, slash, mask_text = value.partition("/")
    lo_text, dash, hi_text = body.partition("-")
    lo = _address(lo_text, value)
    hi = _address(hi_text, value) if dash else None
    if hi is not None and hi.version != lo.version:
        raise ValueError(f"{value!r} mixes IPv4 and IPv6")
    if slash and not mask_text:
        raise ValueError(f"{value!r} has an empty mask")
    bits = _mask(mask_text, lo.version, value) if slash else lo.max_prefixlen
    net_lo = ipaddress.ip_network(f"{lo}/{bits}", strict=False)
    note = None
    if net_lo.network_address != lo:
        note = f"{value!r}: the mask cuts bits off the address; Squid matches {net_lo}"
    if hi is None:
        return [str(net_lo)], note
    net_hi = ipaddress.ip_network(f"{hi}/{bits}", strict=False)
    first, last = int(net_lo.network_address), int(net_hi.broadcast_address)
    if last < first:
        raise ValueError(f"{value!r} is a range whose end is before its start")
    make = ipaddress.IPv4Address if lo.version == 4 else ipaddress.IPv6Address
    cidrs = ipaddress.summarize_address_range(make(first), make(last))  # type: ignore[arg-type]
    return [str(n) for n in cidrs], note


def is_address_like(value: str) -> bool:
    """Whether a ``src``/``dst`` value is written as an address (not a host name)."""
    head = value.partition("/")[0].partition("-")[0]
    return bool(_V4.match(head) or ":" in head) or value.lower() in _EVERYTHING


#: POSIX bracket classes (Squid's regexes are POSIX extended) and Python's spelling
_POSIX_CLASSES = {
    "alpha": "a-zA-Z",
    "digit": "0-9",
    "alnum": "a-zA-Z0-9",
    "upper": "A-Z",
    "lower": "a-z",
    "space": r" \t\n\r\f\v",
    "blank": r" \t",
    "punct": r"!-/:-@\[-`{-~",
    "xdigit": "0-9A-Fa-f",
    "cntrl": r"\x00-\x1f\x7f",
    "print": r" -~",
    "graph": r"!-~",
}
_POSIX = re.compile(r"\[:([a-z]+):\]")


def regex(pattern: str, ignore_case: bool) -> str:
    """A Squid (POSIX extended) regular expression as a Python one, ``(?i)`` in front for
    ``-i``; raises ValueError when Python cannot compile it."""

    def cls(m: re.Match[str]) -> str:
        if m.group(1) not in _POSIX_CLASSES:
            raise ValueError(f"{pattern!r}: unknown character class [:{m.group(1)}:]")
        return _POSIX_CLASSES[m.group(1)]

    out = _POSIX.sub(cls, pattern)
    if ignore_case:
        out = "(?i)" + out
    try:
        re.compile(out)
    except re.error as e:
        raise ValueError(f"{pattern!r} is not a valid regular expression: {e}") from None
    return out


_DAYS = set("SMTWHFA")
_HOURS = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")


def time_spec(tokens: list[str]) -> str:
    """One Squid ``time`` ACL line (``MTWHF 08:00-17:00``, days or hours alone) as one fwproxy
    value. Squid's window includes its last minute (``t <= stop``); fwproxy's ends before
    its end: the end is written one minute later."""
    days = ""
    window = ""
    for t in tokens:
        m = _HOURS.match(t)
        if m:
            if window:
                raise ValueError(f"{' '.join(tokens)!r} has two time windows")
            h1, m1, h2, m2 = (int(g) for g in m.groups())
            start, stop = h1 * 60 + m1, h2 * 60 + m2
            if h1 > 24 or h2 > 24 or m1 > 59 or m2 > 59 or stop > 24 * 60:
                raise ValueError(f"{t!r} is not a time window like 08:00-17:00")
            if start > stop:
                raise ValueError(f"{t!r}: Squid needs the start before the end")
            stop = min(stop + 1, 24 * 60)
            window = f"{start // 60:02d}:{start % 60:02d}-{stop // 60:02d}:{stop % 60:02d}"
        elif t and set(t.upper()) <= _DAYS | {"D"}:
            # Squid accepts its letters in any case; D is Squid's "weekdays" (MTWHF)
            days += t.upper().replace("D", "MTWHF")
        else:
            raise ValueError(f"{t!r} is neither days (SMTWHFA) nor a window like 08:00-17:00")
    if not days and not window:
        raise ValueError("no days and no time window")
    days = "".join(sorted(set(days), key="SMTWHFA".index))
    return " ".join(x for x in (days, window) if x)


_UNITS = {
    "millisecond": 0.001,
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86400,
    "week": 7 * 86400,
    "fortnight": 14 * 86400,
    "month": 30 * 86400,
    "year": 365 * 86400,
    "decade": 3650 * 86400,
}


def seconds(tokens: tuple[str, ...] | list[str], default_unit: str = "second") -> float:
    """``"30 seconds"``, ``"2 minutes"``, ``"1 hour"`` (Squid's time units) in seconds."""
    if not tokens or len(tokens) > 2:
        raise ValueError(f"{' '.join(tokens)!r} is not a time like '30 seconds'")
    try:
        number = float(tokens[0])
    except ValueError:
        raise ValueError(f"{tokens[0]!r} is not a number") from None
    unit = tokens[1].lower() if len(tokens) == 2 else default_unit
    unit = unit[:-1] if unit.endswith("s") and unit[:-1] in _UNITS else unit
    if unit not in _UNITS or number < 0 or number != number:
        raise ValueError(f"{' '.join(tokens)!r} is not a time like '30 seconds'")
    return number * _UNITS[unit]


SIZE_UNITS = {"bytes": 1, "byte": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}


def size(tokens: tuple[str, ...] | list[str]) -> int:
    """``"10 MB"`` (Squid's size units, 1024-based; bytes when none) in bytes; ``none`` and
    0 are no limit (0)."""
    if len(tokens) == 1 and tokens[0].lower() == "none":
        return 0
    if not tokens or len(tokens) > 2 or not tokens[0].isdigit():
        raise ValueError(f"{' '.join(tokens)!r} is not a size like '10 MB'")
    unit = tokens[1].lower() if len(tokens) == 2 else "bytes"
    if unit not in SIZE_UNITS:
        raise ValueError(f"{' '.join(tokens)!r} is not a size like '10 MB'")
    return int(tokens[0]) * SIZE_UNITS[unit]
