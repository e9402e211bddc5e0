# -*- test-case-name: tests.attack.test_auth -*-
"""Proxy authentication: ``Proxy-Authorization: Basic`` checked through ``twisted.cred``.

- :class:`HtpasswdChecker` is an ``ICredentialsChecker`` over an htpasswd file with bcrypt
  (``htpasswd -B``) and ``{SHA}`` (``htpasswd -s``) entries. Plain-text, DES-crypt and MD5
  (``$apr1$``) entries are refused when the file is loaded, with the line named. The file is
  re-read when its modification time changes. bcrypt runs in the reactor's thread pool.
- :class:`Authenticator` parses the header, asks a ``twisted.cred`` :class:`Portal` (so an
  embedding application can plug in its own checkers), caches successes for ``cache_ttl``
  seconds (a hash of the credentials, never the password), and limits failed attempts per client
  address so the proxy is not a password-guessing oracle.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Sequence
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from zope.interface import Interface, implementer


class IProxyUser(Interface):
    """The avatar interface: a proxy user is represented by its name (a ``str``)."""


class HtpasswdError(ValueError):
    """An htpasswd file cannot be used."""


def parse_htpasswd(text: str, source: str) -> dict[str, bytes]:
    """``{user: hash}`` from htpasswd ``text``; refuses weak or plain-text entries."""
    users: dict[str, bytes] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user or not hashed:
            raise HtpasswdError(f"{source}:{n}: not a 'user:hash' line")
        if hashed.startswith(("$2y$", "$2b$", "$2a$")):
            pass
        elif hashed.startswith("{SHA}"):
            try:
                if len(base64.b64decode(hashed[5:], validate=True)) != 20:
                    raise ValueError
            except (binascii.Error, ValueError):
                raise HtpasswdError(
                    f"{source}:{n}: user {user!r}: malformed {{SHA}} hash"
                ) from None
        elif hashed.startswith("$apr1$"):
            raise HtpasswdError(
                f"{source}:{n}: user {user!r}: MD5 ($apr1$) entries are refused; "
                "use bcrypt (htpasswd -B)"
            )
        elif len(hashed) == 13 and "$" not in hashed:
            raise HtpasswdError(
                f"{source}:{n}: user {user!r}: DES-crypt entries are refused; use bcrypt (htpasswd -B)"
            )
        else:
            raise HtpasswdError(
                f"{source}:{n}: user {user!r}: plain-text or unknown password format refused; "
                "use bcrypt (htpasswd -B)"
            )
        users[user] = hashed.encode("ascii")
    return users


def _verify(password: bytes, hashed: bytes) -> bool:
    if hashed.startswith(b"{SHA}"):
        digest = base64.b64encode(hashlib.sha1(password).digest())
        return hmac.compare_digest(digest, hashed[5:])
    import bcrypt

    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:
        return False


@implementer(ICredentialsChecker)
class HtpasswdChecker:
    """Checks ``IUsernamePassword`` against an htpasswd file, re-read when it changes."""

    credentialInterfaces: Sequence[Any] = (IUsernamePassword,)

    def __init__(self, path: str, reactor: Any = None) -> None:
        self.path = path
        self._reactor = reactor
        self._mtime: float | None = None
        self.users: dict[str, bytes] = {}
        self.reload()

    def reload(self) -> None:
        """Read the file now. :raise HtpasswdError: it is unreadable or has refused entries."""
        try:
            st = os.stat(self.path)
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise HtpasswdError(f"{self.path}: cannot read: {e}") from None
        self.users = parse_htpasswd(text, self.path)
        self._mtime = st.st_mtime

    def _maybe_reload(self) -> None:
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError:
            return  # keep the users we have while the file is being replaced
        if mtime != self._mtime:
            try:
                self.reload()
            except HtpasswdError as e:
                from twisted.logger import Logger

                Logger().error("fwproxy: keeping the previous users: {e}", e=str(e))
                self._mtime = mtime

    def requestAvatarId(self, credentials: Any) -> Deferred[Any]:
        self._maybe_reload()
        user = credentials.username
        if isinstance(user, bytes):
            user = user.decode("utf-8", "replace")
        password = credentials.password
        if isinstance(password, str):
            password = password.encode("utf-8")
        hashed = self.users.get(user)
        if hashed is None:
            return fail(UnauthorizedLogin("no such user"))
        if hashed.startswith(b"{SHA}") or self._reactor is None:
            ok = _verify(password, hashed)
            return succeed(user) if ok else fail(UnauthorizedLogin("bad password"))
        pool = self._reactor.getThreadPool()
        d = deferToThreadPool(self._reactor, pool, _verify, password, hashed)

        def decide(ok: bool) -> str:
            if not ok:
                raise UnauthorizedLogin("bad password")
            return user

        return d.addCallback(decide)


@implementer(IRealm)
class NameRealm:
    """Avatars are the user names themselves."""

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> tuple[Any, str, Any]:
        return IProxyUser, avatarId, lambda: None


def make_portal(checkers: Sequence[Any]) -> Portal:
    return Portal(NameRealm(), checkers)


def parse_basic(value: bytes) -> tuple[str, str] | None:
    """``(user, password)`` from a ``Basic`` credentials value, or None if malformed."""
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        return None
    return user, password


# results of Authenticator.authenticate
RATE_LIMITED = object()


class Authenticator:
    """Turns ``Proxy-Authorization`` values into user names.

    :meth:`authenticate` returns the user name, ``None`` (no or bad credentials),
    :data:`RATE_LIMITED` (this client failed too often recently), or a Deferred of one of those
    (only when the portal must be asked: successes are cached for ``cache_ttl`` seconds).
    """

    def __init__(
        self,
        portal: Portal,
        clock: Any,
        realm: str = "fwproxy",
        cache_ttl: float = 300.0,
        max_failures: int = 10,
        failure_window: float = 60.0,
    ) -> None:
        self.portal = portal
        self.clock = clock
        self.realm = realm
        self.cache_ttl = cache_ttl
        self.max_failures = max_failures
        self.failure_window = failure_window
        self._cache: dict[bytes, tuple[float, str]] = {}
        self._failures: dict[str, list[float]] = {}
        self._salt = os.urandom(16)

    def challenge(self) -> bytes:
        realm = self.realm.replace("\\", "\\\\").replace('"', '\\"')
        return f'Basic realm="{realm}"'.encode("latin-1", "replace")

    def _limited(self, client: str, now: float) -> bool:
        if not self.max_failures:
            return False
        times = self._failures.get(client)
        if not times:
            return False
        cutoff = now - self.failure_window
        while times and times[0] < cutoff:
            times.pop(0)
        if not times:
            del self._failures[client]
            return False
        return len(times) >= self.max_failures

    def _failed(self, client: str) -> None:
        if not self.max_failures:
            return
        if len(self._failures) > 100_000:
            self._failures.clear()
        self._failures.setdefault(client, []).append(self.clock.seconds())

    def authenticate(self, credentials: bytes | None, client: str) -> Any:
        now = self.clock.seconds()
        if self._limited(client, now):
            return RATE_LIMITED
        if credentials is None:
            return None
        key = hashlib.sha256(self._salt + credentials).digest()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        parsed = parse_basic(credentials)
        if parsed is None:
            self._failed(client)
            return None
        user, password = parsed
        d = self.portal.login(UsernamePassword(user.encode(), password.encode()), None, IProxyUser)

        def ok(result: tuple[Any, str, Any]) -> str:
            name = result[1]
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[key] = (self.clock.seconds() + self.cache_ttl, name)
            return name

        def bad(f: Any) -> None:
            f.trap(UnauthorizedLogin)
            self._failed(client)
            return None

        return d.addCallbacks(ok, bad)
