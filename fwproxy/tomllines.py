# -*- test-case-name: tests.test_tomllines -*-
"""Where each key of a TOML document is: the line numbers ``tomllib`` does not give.

:func:`key_lines` scans a document that ``tomllib`` has already accepted and maps the path of
every table, key, array element and ``[[array of tables]]`` entry to the line where it begins,
so a configuration problem found in the parsed values can name its line. A path is a tuple of
keys (``str``) and indices (``int``): ``("acl", "lan", "src", 1)`` is the second value of
``src`` in ``[acl.lan]`` (or in ``acl.lan = {src = [...]}``); ``("filters", 0)`` is the first
``[[filters]]``. Text it cannot follow ends the scan: what was found until then is returned.
"""

from __future__ import annotations

import bisect
import re
import tomllib
from collections.abc import Callable

Path = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_STRING = re.compile(
    r'"""(?:[^"\\]|\\.|"{1,2}(?!"))*"{3,5}'  # multi-line basic; up to two quotes end it
    r"|'''(?:[^']|'{1,2}(?!'))*'{3,5}"  # multi-line literal
    r'|"(?:[^"\\\n]|\\.)*"'  # basic
    r"|'[^'\n]*'",  # literal
    re.DOTALL,
)
_SCALAR = re.compile(r"[^,\]}\r\n#]+")  # numbers, booleans, dates (which may hold a space)


class _Stop(Exception):
    """The scanner met text it does not follow."""


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.newlines = [m.start() for m in re.finditer("\n", text)]
        self.lines: dict[Path, int] = {}
        self.array_tables: dict[Path, int] = {}  # [[name]] path -> entries so far

    def line(self) -> int:
        return bisect.bisect_left(self.newlines, self.pos) + 1

    def record(self, path: Path, line: int) -> None:
        for n in range(1, len(path) + 1):
            self.lines.setdefault(path[:n], line)

    def at(self, token: str) -> bool:
        return self.text.startswith(token, self.pos)

    def skip(self, newlines: bool) -> None:
        """Skip blanks and comments (and line ends, when ``newlines``)."""
        text = self.text
        while self.pos < len(text):
            c = text[self.pos]
            if c in " \t" or (newlines and c in "\r\n"):
                self.pos += 1
            elif c == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            else:
                return

    def expect(self, token: str) -> None:
        self.skip(newlines=False)
        if not self.at(token):
            raise _Stop(self.pos)
        self.pos += len(token)

    def key(self) -> tuple[str, ...]:
        parts = []
        while True:
            self.skip(newlines=False)
            m = _STRING.match(self.text, self.pos) or _BARE_KEY.match(self.text, self.pos)
            if not m:
                raise _Stop(self.pos)
            self.pos = m.end()
            word = m.group()
            parts.append(tomllib.loads(f"k = {word}")["k"] if word[0] in "\"'" else word)
            self.skip(newlines=False)
            if not self.at("."):
                return tuple(parts)
            self.pos += 1

    def resolve(self, key: tuple[str, ...]) -> Path:
        """A table header's path: a name that is an array of tables means its last entry."""
        path: Path = ()
        for part in key:
            path += (part,)
            if path in self.array_tables:
                path += (self.array_tables[path] - 1,)
        return path

    def document(self) -> None:
        table: Path = ()
        while True:
            self.skip(newlines=True)
            if self.pos >= len(self.text):
                return
            line = self.line()
            if self.at("[["):
                self.pos += 2
                key = self.key()
                self.expect("]]")
                array = self.resolve(key[:-1]) + key[-1:]
                n = self.array_tables.get(array, 0)
                self.array_tables[array] = n + 1
                table = array + (n,)
                self.record(table, line)
            elif self.at("["):
                self.pos += 1
                key = self.key()
                self.expect("]")
                table = self.resolve(key)
                self.record(table, line)
            else:
                self.pair(table)

    def pair(self, table: Path) -> None:
        line = self.line()
        path = table + self.key()
        self.expect("=")
        self.record(path, line)
        self.value(path)

    def value(self, path: Path) -> None:
        self.skip(newlines=False)
        if self.at("["):
            self.pos += 1
            self.items("]", lambda n: self.value_in(path + (n,)))
        elif self.at("{"):
            self.pos += 1
            self.items("}", lambda n: self.pair(path))
        else:
            m = _STRING.match(self.text, self.pos) or _SCALAR.match(self.text, self.pos)
            if not m:
                raise _Stop(self.pos)
            self.pos = m.end()

    def value_in(self, path: Path) -> None:
        self.record(path, self.line())
        self.value(path)

    def items(self, close: str, item: Callable[[int], None]) -> None:
        """The comma-separated items of an array or inline table, up to ``close``."""
        n = 0
        while True:
            self.skip(newlines=True)
            if self.at(close):
                self.pos += 1
                return
            item(n)
            n += 1
            self.skip(newlines=True)
            if self.at(","):
                self.pos += 1
            elif not self.at(close):
                raise _Stop(self.pos)


def key_lines(text: str) -> dict[Path, int]:
    """The line (from 1) where each table, key, array element and array-of-tables entry of
    the TOML document ``text`` begins, by path; a path is there once, at its first line."""
    scanner = _Scanner(text)
    try:
        scanner.document()
    except (_Stop, tomllib.TOMLDecodeError):
        pass
    return scanner.lines
