# -*- test-case-name: tests.test_squidconf_parse -*-
"""What a conversion has to say: one line per directive or value it did not translate.

Warnings (``FILE:LINE: directive: not translated (reason)``, or a note about how something was
translated) change no access decision; errors do — a bad value, or a directive that decides
access and has no fwproxy equivalent — and make the conversion exit 1 unless forced, in which
case the value or directive is dropped and the line says so.
"""

from __future__ import annotations

from typing import Protocol


class Located(Protocol):
    """Anything with a place and a directive name (a :class:`fwproxy.squidconf.parse.Directive`)."""

    @property
    def where(self) -> str: ...

    @property
    def name(self) -> str: ...


class Report:
    """The messages of one conversion, in the order they were found."""

    def __init__(self, force: bool = False) -> None:
        self.force = force
        self.messages: list[str] = []
        self.errors: list[str] = []
        #: nothing could be read: exit 1 even when forced
        self.fatal_error = False

    def skip(self, d: Located, reason: str) -> None:
        """``d`` is not translated and that changes no access decision."""
        self.messages.append(f"{d.where}: {d.name}: not translated ({reason})")

    def note(self, d: Located, text: str) -> None:
        """Something about how ``d`` was translated that the user should know."""
        self.messages.append(f"{d.where}: {d.name}: {text}")

    def error(self, d: Located, text: str) -> None:
        """A bad value or an untranslatable access decision in ``d``."""
        line = f"{d.where}: {d.name}: error: {text}"
        if self.force:
            line += " (dropped: --force)"
        self.messages.append(line)
        self.errors.append(line)

    def untranslated(self, d: Located, reason: str) -> None:
        """``d`` decides access and is not translated: an error."""
        line = f"{d.where}: {d.name}: not translated ({reason})"
        if self.force:
            line += " (dropped: --force)"
        self.messages.append(line)
        self.errors.append(line)

    def fatal(self, line: str) -> None:
        """Nothing could be converted (the file itself is unreadable)."""
        self.messages.append(line)
        self.errors.append(line)
        self.fatal_error = True
