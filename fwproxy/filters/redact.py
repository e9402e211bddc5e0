# -*- test-case-name: tests.test_redact -*-
"""The built-in ``redact`` body filter: replace matches of regular expressions in bodies as they
stream, across chunk boundaries, holding back only a bounded tail between chunks.

Options (a ``[[filters]]`` entry, ``name = "redact"``):

- ``patterns``: the regular expressions (Python syntax, matched on the body's bytes; text is
  encoded as UTF-8), at least one; none may match the empty string;
- ``replacement``: what a match becomes (default ``"[REDACTED]"``), or ``mask``: one character
  that replaces every byte of a match, which keeps the body's length (and its Content-Length);
- ``max_match``: the longest match, in bytes (default 1024): this much of the body, at most, is
  held back between chunks, and a longer match may be missed or cut where a chunk ends;
- ``responses`` / ``requests``: which bodies to redact (default: responses only);
- ``content_types``: media-type prefixes to redact (default: all, e.g. ``["text/",
  "application/json"]``);
- ``encoded``: what becomes of a selected body with a ``Content-Encoding`` (gzip, br, ...), whose
  compressed bytes no pattern can match (the proxy does not decode bodies): ``"refuse"`` (the
  default: a request body gets ``415``, a response ``502``, before any of it is sent) or
  ``"pass"`` (passed on untouched).

When responses are redacted, requests are sent with ``Accept-Encoding: identity``, so that an
origin answers with bytes the patterns can see (a client asking for gzip would otherwise get its
responses past the filter). Matches are as in one
``re.sub`` over the whole body as long as each is at most ``max_match`` bytes and its pattern
looks back at most ``max_match`` bytes (``\\b`` and short look-behinds are fine).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from zope.interface import implementer, provider

from fwproxy.interfaces import (
    IBodyTransform,
    IFilterContext,
    IFilterFactory,
    IRequestBodyFilter,
    IRequestFilter,
    IResponseBodyFilter,
)
from fwproxy.message import Headers, Request, Response

_KNOWN = (
    "patterns",
    "replacement",
    "mask",
    "max_match",
    "responses",
    "requests",
    "content_types",
    "encoded",
)
ENCODED = ("refuse", "pass")
REFUSED_REQUEST = "fwproxy: a compressed request body cannot be checked (redact filter)"


@dataclass(frozen=True)
class RedactSpec:
    """The validated options of a ``redact`` filter."""

    pattern: re.Pattern[bytes]
    replacement: bytes | None  # None: mask every byte with ``mask``
    mask: bytes
    max_match: int
    responses: bool
    requests: bool
    content_types: tuple[bytes, ...]
    refuse_encoded: bool = True

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RedactSpec:
        """Validate ``options``; raise ValueError naming the bad key."""
        for key in options:
            if key not in _KNOWN:
                raise ValueError(f"{key}: unknown key (known: {', '.join(_KNOWN)})")
        patterns = options.get("patterns")
        if not isinstance(patterns, list) or not patterns:
            raise ValueError("patterns: expected a list of one or more regular expressions")
        parts = []
        for i, p in enumerate(patterns):
            if not isinstance(p, str) or not p:
                raise ValueError(f"patterns[{i}]: expected a non-empty string")
            try:
                compiled = re.compile(p.encode("utf-8"))
            except re.error as e:
                raise ValueError(
                    f"patterns[{i}]: {p!r} is not a regular expression ({e})"
                ) from None
            if compiled.search(b"") is not None:
                raise ValueError(f"patterns[{i}]: {p!r} matches the empty string")
            parts.append(f"(?:{p})")
        pattern = re.compile("|".join(parts).encode("utf-8"))
        if "mask" in options and "replacement" in options:
            raise ValueError("mask: give either mask or replacement, not both")
        mask = options.get("mask", "")
        if "mask" in options and (not isinstance(mask, str) or len(mask.encode()) != 1):
            raise ValueError(f"mask: {mask!r} must be one ASCII character")
        replacement = options.get("replacement", "[REDACTED]")
        if not isinstance(replacement, str):
            raise ValueError(f"replacement: expected a string, not {replacement!r}")
        max_match = options.get("max_match", 1024)
        if type(max_match) is not int or not 1 <= max_match <= 1024 * 1024:
            raise ValueError(f"max_match: {max_match!r} must be an integer from 1 to 1048576")
        flags = {}
        for key, default in (("responses", True), ("requests", False)):
            flags[key] = options.get(key, default)
            if not isinstance(flags[key], bool):
                raise ValueError(f"{key}: expected true or false, not {flags[key]!r}")
        types = options.get("content_types", [])
        if not isinstance(types, list) or not all(isinstance(t, str) and t for t in types):
            raise ValueError("content_types: expected a list of media-type prefixes")
        encoded = options.get("encoded", "refuse")
        if encoded not in ENCODED:
            raise ValueError(f"encoded: {encoded!r} must be one of {', '.join(ENCODED)}")
        return cls(
            pattern=pattern,
            replacement=None if "mask" in options else replacement.encode("utf-8"),
            mask=mask.encode(),
            max_match=max_match,
            responses=flags["responses"],
            requests=flags["requests"],
            content_types=tuple(t.lower().encode("latin-1") for t in types),
            refuse_encoded=encoded == "refuse",
        )


@implementer(IBodyTransform)
class Redaction:
    """One body being redacted. Between chunks it keeps the undecided tail (at most
    ``max_match`` bytes) and as much already-sent text before it as a look-behind may need."""

    def __init__(self, spec: RedactSpec) -> None:
        self.spec = spec
        self.keeps_length = spec.replacement is None
        self._context = b""  # bytes already passed on, kept for look-behinds
        self._pending = b""  # bytes not decided yet

    def _replace(self, match: re.Match[bytes]) -> bytes:
        if self.spec.replacement is None:
            return self.spec.mask * (match.end() - match.start())
        return self.spec.replacement

    def _scan(self, data: bytes, final: bool) -> bytes:
        spec = self.spec
        ctx = self._context
        buf = ctx + self._pending + data
        pos = len(ctx)
        # a match starting before `safe` is complete: it cannot grow with more data
        safe = len(buf) if final else len(buf) - spec.max_match
        out = []
        while pos < len(buf):
            m = spec.pattern.search(buf, pos)
            if m is None or m.start() >= safe:
                break
            if m.end() == m.start():  # an empty match (a look-around alone): nothing to hide
                if m.start() >= len(buf):
                    break
                out.append(buf[pos : m.start() + 1])
                pos = m.start() + 1
                continue
            out.append(buf[pos : m.start()])
            out.append(self._replace(m))
            pos = m.end()
        keep = len(buf) if final else max(pos, len(buf) - spec.max_match)
        out.append(buf[pos:keep])
        self._pending = buf[keep:]
        self._context = buf[max(0, keep - spec.max_match) : keep]
        return b"".join(out)

    def data(self, chunk: bytes) -> bytes:
        return self._scan(chunk, False)

    def end(self) -> bytes:
        return self._scan(b"", True)


def _wanted(types: tuple[bytes, ...], headers: Headers) -> bool:
    if not types:
        return True
    ctype = (headers.get(b"content-type") or b"").strip().lower()
    return ctype.startswith(types)


def _encoded(headers: Headers) -> bool:
    encoding = headers.get(b"content-encoding")
    return bool(encoding) and encoding.strip().lower() != b"identity"  # type: ignore[union-attr]


@implementer(IBodyTransform)
class Refusal:
    """A body the patterns cannot see (it is compressed): refused before any of it is sent."""

    keeps_length = True

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message

    def data(self, chunk: bytes) -> Response:
        return Response.text(self.status, self.message)

    def end(self) -> Response:
        return Response.text(self.status, self.message)


@implementer(IRequestFilter, IRequestBodyFilter, IResponseBodyFilter)
class RedactFilter:
    """Applies a :class:`RedactSpec` to the request and response bodies it is configured for."""

    def __init__(self, spec: RedactSpec) -> None:
        self.spec = spec

    def requestReceived(self, request: Request) -> Response | None:
        spec = self.spec
        if spec.responses:
            request.headers.set(b"Accept-Encoding", b"identity")
        if (
            spec.requests
            and spec.refuse_encoded
            and _encoded(request.headers)
            and _wanted(spec.content_types, request.headers)
        ):
            # refused on its head, before anything of it goes upstream
            return Response.text(415, REFUSED_REQUEST)
        return None

    def _take(self, headers: Headers, refusal: tuple[int, str]) -> IBodyTransform | None:
        spec = self.spec
        if not _wanted(spec.content_types, headers):
            return None
        if _encoded(headers):
            return Refusal(*refusal) if spec.refuse_encoded else None
        return Redaction(spec)

    def requestBody(self, request: Request) -> IBodyTransform | None:
        if not self.spec.requests:
            return None
        return self._take(request.headers, (415, REFUSED_REQUEST))

    def responseBody(self, request: Request, response: Response) -> IBodyTransform | None:
        if not self.spec.responses:
            return None
        return self._take(
            response.headers,
            (502, "fwproxy: the origin sent a compressed body that cannot be checked"),
        )


@provider(IFilterFactory)
class RedactFactory:
    """``redact``: a ``[[filters]]`` entry's options (see the module docstring)."""

    name = "redact"

    @staticmethod
    def build(options: Mapping[str, Any], context: IFilterContext) -> RedactFilter:
        return RedactFilter(RedactSpec.from_options(options))
