"""Build script: metadata is in setup.cfg. ``FWPROXY_COMPILE=1`` adds the optional compiled build.

The hot modules of the request path are compiled with mypyc (from their type hints) into C
extension modules that sit beside the pure-Python sources and are imported instead of them —
the way aiohttp and httptools ship their speed-ups; everything else, and the whole package when
the variable is unset, stays pure Python. mypyc comes with mypy, which must be importable by the
build, so a compiled install is:

    pip install mypy && FWPROXY_COMPILE=1 pip install --no-build-isolation .

``fwproxy --version`` says which build is running. See docs/performance.md for what it buys.
"""

import os

from setuptools import setup

#: the request path's modules: parsing, transactions, the relay, the pool, timers, logging.
#: Classes others subclass are marked ``mypyc_attr(allow_interpreted_subclasses=True)``.
COMPILED = [
    "fwproxy/http1.py",
    "fwproxy/hopbyhop.py",
    "fwproxy/timer.py",
    "fwproxy/logformat.py",
    "fwproxy/target.py",
    "fwproxy/record.py",
    "fwproxy/chain.py",
    "fwproxy/selfcheck.py",
    "fwproxy/writes.py",
    "fwproxy/transaction.py",
    "fwproxy/destination.py",
    "fwproxy/relay.py",
    "fwproxy/response.py",
    "fwproxy/upstream.py",
    "fwproxy/connection.py",
    "fwproxy/protocol.py",
]

ext_modules = []
if os.environ.get("FWPROXY_COMPILE") == "1":
    try:
        from mypyc.build import mypycify
    except ImportError:
        raise SystemExit(
            "FWPROXY_COMPILE=1 needs mypy (mypyc) in the build environment: "
            "pip install mypy, then pip install --no-build-isolation ."
        ) from None
    ext_modules = mypycify(COMPILED, opt_level="3")

setup(ext_modules=ext_modules)
