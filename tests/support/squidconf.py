"""Helpers for the ``convert-squid`` tests: convert a squid.conf snippet written to a
temporary directory, and read the result back as TOML and as fwproxy's configuration."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from fwproxy.acl import ACL_TYPES
from fwproxy.config import Config, loads
from fwproxy.squidconf import Conversion, convert


def run(tmp_path: Path, text: str, **kwargs: Any) -> Conversion:
    path = tmp_path / "squid.conf"
    path.write_text(text)
    return convert(str(path), **kwargs)


def data(result: Conversion) -> dict[str, Any]:
    return tomllib.loads(result.toml)


def rules(result: Conversion) -> list[str]:
    return list(data(result)["access"]["rules"])


def acl(result: Conversion, name: str) -> dict[str, Any]:
    return dict(data(result)["acl"][name])


def config(result: Conversion) -> Config:
    """The converted file as fwproxy loads it (raises ConfigError if it does not)."""
    return loads(result.toml, "converted.toml")


FLOOR = ["deny to_linklocal", "deny to_localhost", "deny to_self"]


def config_if_known(result: Conversion, *types: str) -> Config | None:
    """:func:`config`, once this fwproxy has the ACL ``types`` (``urlpath_regex`` and
    ``localport`` come with another branch); None before."""
    if all(t in ACL_TYPES for t in types):
        return config(result)
    return None
