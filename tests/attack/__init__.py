"""Attack and fault tests: request smuggling, property tests, faults, authentication, load.

A package (tests/attack/__init__.py) so that its module names (``attack.test_auth`` ...) never
collide with same-named test modules elsewhere under tests/.
"""
