"""Test support shared by tests/integration and tests/attack: loopback origin and echo servers
(:mod:`support.servers`) and real ``twistd -n fwproxy`` processes (:mod:`support.proxyproc`).

Stdlib only; every address is loopback and every wait is bounded. Importable as ``support``
because tests/ is on ``sys.path`` (pytest's rootdir-relative insertion for tests/attack and the
top-level test modules; tests/integration/conftest.py inserts it explicitly).
"""
