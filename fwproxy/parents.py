# -*- test-case-name: tests.test_routing -*-
"""Parent proxies: what one is (:class:`Parent`), whether it is up (:class:`ParentHealth`), and
the few bytes the proxy exchanges with one, sans-IO.

A parent is another forward proxy the proxy sends requests through (Squid's ``cache_peer ...
parent``): relayed requests go to it in absolute form with the parent's ``Proxy-Authorization``
(never the client's), and a CONNECT becomes a CONNECT to the parent (:func:`connect_head`, its
answer read by :class:`ConnectReply`), then the splice. A parent that fails ``max_failures``
times in a row (it refuses, times out, fails its TLS handshake or closes before answering) is
marked down for ``retry_after`` seconds; the next request after that tries it again, and one
success brings it back.

Credentials are Basic (``USER:PASSWORD`` from a file or an environment variable, read with the
configuration): they are kept as the ready ``Proxy-Authorization`` value, which no ``repr``,
log line, record or error page shows.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger

from fwproxy.message import Request

log = Logger()

#: the pool key's scheme of connections to parents (over TLS or not)
PROXY_SCHEMES = ("proxy", "proxy+tls")


class ParentError(ValueError):
    """A parent's settings that cannot be used; the message names the key and the problem."""


class ParentRefused(Exception):
    """A parent answered a CONNECT with something other than 2xx."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}".strip())
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Parent:
    """One parent proxy (``[parents.NAME]``): ``address`` as ``host``/``port``; ``tls``: the
    proxy speaks TLS to it, verified as for ``https://`` origins (:mod:`fwproxy.origination`);
    ``credentials``: the ``Proxy-Authorization`` value to send it (``Basic ...``), or None;
    ``max_failures`` failures in a row mark it down for ``retry_after`` seconds."""

    name: str
    host: str
    port: int
    tls: bool = False
    credentials: bytes | None = field(default=None, repr=False)
    max_failures: int = 3
    retry_after: float = 30.0

    @property
    def authority(self) -> str:
        """``host:port`` (an IPv6 host in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def key(self) -> tuple[str, str, int]:
        """The upstream pool's key for connections to this parent: apart from direct ones
        to the same ``host:port``, and plain apart from TLS."""
        return (PROXY_SCHEMES[self.tls], self.host, self.port)

    @property
    def tls_name(self) -> str | None:
        """The name its certificate must have (None: no TLS to it)."""
        return self.host if self.tls else None

    def __str__(self) -> str:
        return f"{self.name} ({self.authority})"


def basic(user_password: str) -> bytes:
    """The ``Proxy-Authorization`` value for ``USER:PASSWORD``."""
    return b"Basic " + base64.b64encode(user_password.encode("utf-8"))


def read_credentials(
    credentials_file: str | None, credentials_env: str | None, env: Any = os.environ
) -> bytes | None:
    """The ``Proxy-Authorization`` value from a file or an environment variable holding
    ``USER:PASSWORD`` (one line), or None when neither is given.

    :raise ParentError: naming the key and what is wrong, never the credentials themselves.
    """
    if credentials_file is not None and credentials_env is not None:
        raise ParentError("credentials_env: give credentials_file or credentials_env, not both")
    if credentials_file is not None:
        try:
            with open(credentials_file, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ParentError(
                f"credentials_file: cannot read {credentials_file}: {e.strerror or e}"
            ) from None
        except UnicodeDecodeError:
            raise ParentError(f"credentials_file: {credentials_file} is not UTF-8 text") from None
        where, key = f"{credentials_file} does not hold", "credentials_file"
    elif credentials_env is not None:
        value = env.get(credentials_env)
        if value is None:
            raise ParentError(f"credentials_env: the variable {credentials_env} is not set")
        text, where, key = value, f"the variable {credentials_env} does not hold", "credentials_env"
    else:
        return None
    line = text[:-1] if text.endswith("\n") else text
    line = line[:-1] if line.endswith("\r") else line
    user, sep, password = line.partition(":")
    if not sep or not user or any(c in line for c in "\r\n\0"):
        raise ParentError(f"{key}: {where} one line USER:PASSWORD")
    return basic(line)


_AUTHORITY = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$")


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` of a parent; raise ParentError otherwise."""
    m = _AUTHORITY.match(text)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ParentError(f'address: expected "host:port", got {text!r}')
    return m.group(1).strip("[]").lower(), int(m.group(2))


class ParentHealth:
    """Which parents are up: consecutive failures, and the parents marked down until when.

    :param clock: ``seconds()`` (the reactor): nothing here schedules anything.
    """

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._failures: dict[tuple[str, str, int], int] = {}
        self._down_until: dict[tuple[str, str, int], float] = {}

    @staticmethod
    def _key(parent: Parent) -> tuple[str, str, int]:
        return (parent.name, parent.host, parent.port)

    def is_up(self, parent: Parent) -> bool:
        """Not marked down, or its ``retry_after`` is over (it may be tried again)."""
        until = self._down_until.get(self._key(parent))
        return until is None or self._clock.seconds() >= until

    def down_until(self, parent: Parent) -> float | None:
        """When a parent marked down may be tried again (None: it is not marked down)."""
        return self._down_until.get(self._key(parent))

    def failed(self, parent: Parent, reason: str) -> None:
        """Connecting through ``parent`` failed; after ``max_failures`` in a row (or once,
        when it was retried after being down) it is marked down for ``retry_after`` seconds."""
        key = self._key(parent)
        n = self._failures.get(key, 0) + 1
        self._failures[key] = n
        if n >= parent.max_failures:
            self._down_until[key] = self._clock.seconds() + parent.retry_after
            log.warn(
                "fwproxy: parent {parent} marked down for {after:g} s after {n} failure(s) in "
                "a row; the last: {reason}",
                parent=str(parent),
                after=parent.retry_after,
                n=n,
                reason=reason,
            )

    def succeeded(self, parent: Parent) -> None:
        """Connecting through ``parent`` worked: it is up, its failures are forgotten."""
        key = self._key(parent)
        self._failures.pop(key, None)
        if self._down_until.pop(key, None) is not None:
            log.info("fwproxy: parent {parent} is up again", parent=str(parent))


def connect_head(authority: str, credentials: bytes | None) -> bytes:
    """The CONNECT request to send a parent for a tunnel to ``authority`` (``host:port``)."""
    target = authority.encode("ascii")
    head = b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n"
    if credentials is not None:
        head += b"Proxy-Authorization: " + credentials + b"\r\n"
    return head + b"\r\n"


def absolute_target(scheme: str, host: str, port: int, path: bytes) -> bytes:
    """The absolute-form target of a relayed request, for a parent (default port left out)."""
    h = f"[{host}]" if ":" in host else host
    default = 443 if scheme == "https" else 80
    authority = h if port == default else f"{h}:{port}"
    return f"{scheme}://{authority}".encode("ascii", "replace") + path


def to_parent(
    parent: Parent, request: Request, fields: list[tuple[bytes, bytes]]
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The target (absolute form) and header fields of ``request`` relayed to ``parent``: its
    own credentials added when it has some (the client's never go further than this proxy:
    ``Proxy-Authorization`` is hop-by-hop and was removed from ``fields``)."""
    if parent.credentials is not None:
        fields = [*fields, (b"Proxy-Authorization", parent.credentials)]
    return absolute_target(request.scheme, request.host, request.port, request.path), fields


_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3})(?: ([^\r\n]*))?$")


class ConnectReply:
    """A parent's answer to a CONNECT, fed as it arrives, up to the end of its head.

    :ivar status: its status once complete. :ivar reason: and reason phrase.
    :ivar rest: the bytes after the head (the tunnel's first bytes from the far end).
    """

    #: a head larger than this is not an answer to a CONNECT
    MAX_HEAD = 65536

    def __init__(self) -> None:
        self._buffer = b""
        self.status = 0
        self.reason = ""
        self.rest = b""

    def feed(self, data: bytes) -> bool:
        """Take ``data``; True once the head is complete.

        :raise ParentError: not an HTTP/1.x response head, or too large.
        """
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > self.MAX_HEAD:
                raise ParentError(f"the answer to CONNECT has no end in {self.MAX_HEAD} bytes")
            if not b"HTTP/1."[: len(self._buffer)] == self._buffer[:7]:
                raise ParentError(f"the answer to CONNECT is not HTTP: {self._buffer[:40]!r}")
            return False
        line = self._buffer[: self._buffer.find(b"\r\n")]
        m = _STATUS_LINE.match(line)
        if not m:
            raise ParentError(f"the answer to CONNECT is not HTTP: {line[:80]!r}")
        self.status = int(m.group(1))
        self.reason = (m.group(2) or b"").decode("latin-1")
        self.rest = self._buffer[end + 4 :]
        self._buffer = b""
        return True
