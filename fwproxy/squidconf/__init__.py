# -*- test-case-name: tests.test_squidconf_convert -*-
"""``fwproxy convert-squid``: a squid.conf converted to fwproxy's TOML, deciding as Squid does.

One public function, :func:`convert`, and its result, :class:`Conversion`; the modules behind
them each translate one kind of directive (``acls``, ``access``, ``ports``, ``logging``,
``auth``, ``peers``, ``headers``), ``parse`` reads the file as Squid does and ``emit`` writes
TOML.
"""

from fwproxy.squidconf.conversion import Conversion, convert

__all__ = ["Conversion", "convert"]
