"""Fixtures shared by the in-memory protocol tests (defined in tests/_fakes.py)."""

from tests._fakes import h, make  # noqa: F401 - fixtures, registered by being imported here
