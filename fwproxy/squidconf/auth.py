# -*- test-case-name: tests.test_squidconf_directives -*-
"""``auth_param basic`` as ``[auth]``: ``basic_ncsa_auth FILE`` becomes ``htpasswd``, with the
realm and the credentials TTL. fwproxy accepts bcrypt and ``{SHA}`` entries only: when the file
holds MD5 (``$apr1$``) or DES-crypt entries, the note says how to re-hash them. Other helpers
(LDAP, Kerberos, ...) and other schemes decide who is let in and have no equivalent: errors."""

from __future__ import annotations

import os

from fwproxy.squidconf import values as V
from fwproxy.squidconf.parse import Directive, read_text
from fwproxy.squidconf.report import Report


def weak_entries(path: str) -> list[str]:
    """The users of an htpasswd file whose entries fwproxy refuses (MD5, DES, plain)."""
    try:
        text = read_text(path)
    except OSError:
        return []
    weak = []
    for line in text.splitlines():
        user, sep, hashed = line.strip().partition(":")
        if not sep or user.startswith("#"):
            continue
        if not hashed.startswith(("$2y$", "$2b$", "$2a$", "{SHA}")):
            weak.append(user)
    return weak


class Auth:
    """The ``[auth]`` table of a squid.conf's ``auth_param basic`` lines."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.auth: dict[str, object] = {}

    def auth_param(self, d: Directive) -> None:
        if len(d.args) < 2:
            self.report.error(d, "expected auth_param SCHEME PARAMETER VALUE")
            return
        scheme, param, rest = d.args[0], d.args[1], d.args[2:]
        if scheme != "basic":
            self.report.untranslated(d, f"{scheme} authentication: fwproxy has Basic only")
            return
        if param == "program":
            self._program(d, rest)
        elif param == "realm":
            self.auth["realm"] = " ".join(rest).strip('"')
        elif param == "credentialsttl":
            try:
                self.auth["cache_ttl"] = V.seconds(rest, "second")
            except ValueError as e:
                self.report.error(d, str(e))
        elif param in ("children", "casesensitive", "utf8", "keep_alive"):
            self.report.skip(d, f"{param}: fwproxy checks passwords itself, without helpers")
        else:
            self.report.skip(d, f"unknown parameter {param}")

    def _program(self, d: Directive, rest: tuple[str, ...]) -> None:
        if not rest or not os.path.basename(rest[0]).startswith(("basic_ncsa_auth", "ncsa_auth")):
            helper = os.path.basename(rest[0]) if rest else "(none)"
            self.report.untranslated(
                d, f"helper {helper}: fwproxy checks an htpasswd file only ([auth] htpasswd)"
            )
            return
        if len(rest) < 2:
            self.report.error(d, "basic_ncsa_auth names no password file")
            return
        path = rest[-1]
        self.auth["htpasswd"] = path
        weak = weak_entries(path)
        if weak:
            self.report.note(
                d,
                f"{path}: {len(weak)} entries ({', '.join(weak[:3])}{', ...' if len(weak) > 3 else ''})"
                " are MD5 or DES-crypt, which fwproxy refuses: set each again with "
                f"htpasswd -B {path} USER",
            )
