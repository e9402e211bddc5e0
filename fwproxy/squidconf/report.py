# -*- test-case-name: tests.test_squidconf_parse -*-
"""What a conversion has to say: one line per directive or value it did not translate.

Warnings (``FILE:LINE: directive: not translated (reason)``, or a note about how something was
translated) change no access decision; errors do — a bad value, or a directive that decides
access and has no fwproxy equivalent — and make the conversion exit 1 unless forced, in which
case the value or directive is dropped and the line says so. The lines come out in the order
the directives were read (an included file's where its ``include`` stands), whenever they were
found.
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
    """The messages of one conversion."""

    def __init__(self, force: bool = False) -> None:
        self.force = force
        #: ``(position of the directive, sequence, line, is an error)``
        self._found: list[tuple[int, int, str, bool]] = []
        self._position: dict[int, int] = {}
        self._keep: list[Located] = []
        #: nothing could be read: exit 1 even when forced
        self.fatal_error = False

    def register(self, d: Located) -> None:
        """``d`` is the next directive read: its messages come after those of earlier ones."""
        if id(d) not in self._position:
            self._position[id(d)] = len(self._position)
            self._keep.append(d)  # its id stays its own while the report lives

    def _add(self, d: Located | None, line: str, error: bool) -> None:
        if d is not None:
            self.register(d)
        position = -1 if d is None else self._position[id(d)]
        self._found.append((position, len(self._found), line, error))

    @property
    def messages(self) -> list[str]:
        """Every line, in the order of the directives they are about."""
        return [line for _, _, line, _ in sorted(self._found)]

    @property
    def errors(self) -> list[str]:
        """The lines that make the exit status 1 (unless forced), in the same order."""
        return [line for _, _, line, error in sorted(self._found) if error]

    def skip(self, d: Located, reason: str) -> None:
        """``d`` is not translated and that changes no access decision."""
        self._add(d, f"{d.where}: {d.name}: not translated ({reason})", False)

    def note(self, d: Located, text: str) -> None:
        """Something about how ``d`` was translated that the user should know."""
        self._add(d, f"{d.where}: {d.name}: {text}", False)

    def error(self, d: Located, text: str) -> None:
        """A bad value or an untranslatable access decision in ``d``."""
        self._add(d, f"{d.where}: {d.name}: error: {text}{self._dropped}", True)

    def untranslated(self, d: Located, reason: str) -> None:
        """``d`` decides access and is not translated: an error."""
        self._add(d, f"{d.where}: {d.name}: not translated ({reason}){self._dropped}", True)

    @property
    def _dropped(self) -> str:
        return " (dropped: --force)" if self.force else ""

    def fatal(self, line: str) -> None:
        """Nothing could be converted (the file itself is unreadable)."""
        self._add(None, line, True)
        self.fatal_error = True
