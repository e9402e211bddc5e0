# -*- test-case-name: tests.test_squidconf_emit -*-
"""A small TOML writer for the converted configuration: tables of strings, numbers, booleans,
lists and inline tables, keys quoted where TOML needs it, strings escaped so that any text a
squid.conf holds (quotes, backslashes, control characters) reads back as itself."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def string(s: str) -> str:
    out = ['"']
    for c in s:
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def key(k: str) -> str:
    return k if _BARE.match(k) else string(k)


def value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"{v!r} cannot be written in TOML")
        return str(int(v)) if v.is_integer() else repr(v)
    if isinstance(v, str):
        return string(v)
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, Sequence):
        items = [value(x) for x in v]
        one = "[" + ", ".join(items) + "]"
        if len(one) <= 90:
            return one
        return "[\n" + "".join(f"    {x},\n" for x in items) + "]"
    raise TypeError(f"cannot write {type(v).__name__} in TOML")


def table(path: Sequence[str], entries: Mapping[str, object]) -> str:
    """``[a.b]`` and its ``key = value`` lines."""
    lines = ["[" + ".".join(key(p) for p in path) + "]"]
    lines.extend(f"{key(k)} = {value(v)}" for k, v in entries.items())
    return "\n".join(lines) + "\n"


def document(header: str, tables: Sequence[tuple[Sequence[str], Mapping[str, object]]]) -> str:
    """A TOML document: ``header`` as comment lines, then the tables (empty ones left out)."""
    parts = ["".join(f"# {line}\n".replace("# \n", "#\n") for line in header.splitlines())]
    parts.extend(table(p, e) for p, e in tables if e)
    return "\n".join(parts)
