# -*- test-case-name: tests.test_squidconf_parse -*-
"""Reading a squid.conf into directives, as Squid's own parser does, sans policy.

Lines are joined where one ends with ``\\``; CRLF and CR line ends are read as LF; a token that
starts with ``#`` starts a comment (so ``acl Safe_ports port 80  # http`` has one value, as in
Squid's default file); ``include PATH`` (a glob, relative to the including file, sorted, at most
16 deep) is replaced by the directives of the files it names. A quoted token (``"/etc/squid/
whitelist.txt"``) is kept with its quotes: it names a file of values, read by
:func:`file_values` where a directive takes values. Nothing here raises for a bad input: what
cannot be read is reported through the :class:`Report` and skipped.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

from fwproxy.squidconf.report import Report

#: how deep ``include`` may nest (Squid's own limit is 16 as well)
MAX_INCLUDE_DEPTH = 16


@dataclass(frozen=True)
class Directive:
    """One directive: its file and first line, its name (as written: Squid knows its
    directives in lower case only) and its tokens."""

    file: str
    line: int
    name: str
    args: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def text(self) -> str:
        return " ".join((self.name, *self.args))


def tokenize(line: str) -> list[str]:
    """The tokens of one logical line: blanks separate them, a token starting with ``#`` ends
    the line, ``"..."`` is one token (kept quoted; ``\\"`` inside it is a quote)."""
    tokens: list[str] = []
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c.isspace():
            i += 1
            continue
        if c == "#":
            break
        if c == '"':
            j, buf = i + 1, ['"']
            while j < n and line[j] != '"':
                if line[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(line[j])
                j += 1
            buf.append('"')
            tokens.append("".join(buf))
            i = j + 1
            continue
        j = i
        while j < n and not line[j].isspace():
            j += 1
        tokens.append(line[i:j])
        i = j
    return tokens


def logical_lines(text: str) -> list[tuple[int, str]]:
    """``(first line number, text)`` of each line once continuations are joined."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    out: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.split("\n"), 1):
        if not pending:
            start = number
        if raw.endswith("\\") and not raw.lstrip().startswith("#"):
            pending.append(raw[:-1])
            continue
        pending.append(raw)
        out.append((start, " ".join(pending)))
        pending = []
    if pending:
        out.append((start, " ".join(pending)))
    return out


def read_text(path: str) -> str:
    """A file's text (Latin-1 where it is not UTF-8: Squid reads bytes); raises OSError."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def read_directives(path: str, report: Report) -> list[Directive]:
    """Every directive of ``path`` and the files it includes, in order."""
    out: list[Directive] = []
    _read(path, report, out, 0, None)
    return out


def _read(
    path: str, report: Report, out: list[Directive], depth: int, parent: Directive | None
) -> None:
    try:
        text = read_text(path)
    except OSError as e:
        what = f"cannot read {path}: {e.strerror or e}"
        if parent is None:
            report.fatal(f"{path}: {what}")
        else:
            report.error(parent, what)
        return
    for number, line in logical_lines(text):
        tokens = tokenize(line)
        if not tokens:
            continue
        d = Directive(path, number, tokens[0], tuple(tokens[1:]))
        report.register(d)
        if d.name == "include":
            _include(d, report, out, depth)
        else:
            out.append(d)


def _include(d: Directive, report: Report, out: list[Directive], depth: int) -> None:
    if depth >= MAX_INCLUDE_DEPTH:
        report.error(d, f"includes nest deeper than {MAX_INCLUDE_DEPTH} (a loop?)")
        return
    if not d.args:
        report.error(d, "names no file")
        return
    base = os.path.dirname(d.file)
    for pattern in d.args:
        pattern = pattern.strip('"')
        full = pattern if os.path.isabs(pattern) else os.path.join(base, pattern)
        paths = sorted(glob.glob(full)) if glob.has_magic(full) else [full]
        if not paths:
            report.note(d, f"{pattern!r} matches no file")
        for p in paths:
            _read(p, report, out, depth + 1, d)


def is_file_token(token: str) -> bool:
    return len(token) >= 2 and token.startswith('"') and token.endswith('"')


def file_values(token: str, d: Directive, report: Report) -> list[str] | None:
    """The values in the file a quoted token names (relative to the directive's file), one
    or more per line, ``#`` comments skipped; None (reported as an error) when unreadable."""
    name = token[1:-1]
    if not name:
        report.error(d, '"" names no file of values')
        return None
    path = name if os.path.isabs(name) else os.path.join(os.path.dirname(d.file), name)
    try:
        text = read_text(path)
    except OSError as e:
        report.error(d, f"cannot read the values file {name}: {e.strerror or e}")
        return None
    values: list[str] = []
    for _, line in logical_lines(text):
        values.extend(tokenize(line))
    return values


def expand_values(tokens: list[str] | tuple[str, ...], d: Directive, report: Report) -> list[str]:
    """Tokens with each quoted file name replaced by the file's values."""
    out: list[str] = []
    for t in tokens:
        if is_file_token(t):
            out.extend(file_values(t, d, report) or [])
        else:
            out.append(t)
    return out
