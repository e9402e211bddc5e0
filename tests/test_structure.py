"""Architecture rules for the ``fwproxy`` package, checked on its source (nothing is imported).

The import graph has no cycle (every import counts: top-level, function-local, and those under
``if TYPE_CHECKING:``, since hiding a cycle does not remove it); no module is over 550 lines and
no class over 250; every ``test-case-name`` header names a test module that exists; and no
``dropin.cache`` (Twisted's plugin cache, rebuilt on every machine) is committed.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "fwproxy"
MAX_MODULE_LINES = 550
MAX_CLASS_LINES = 250
HEADER = re.compile(r"^# -\*- test-case-name: (.+?) -\*-$")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_files() -> dict[str, Path]:
    """Every module of the package by dotted name (``fwproxy`` itself included)."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_names(tree: ast.AST, name: str, is_package: bool) -> Iterable[tuple[str, str]]:
    """``(module, imported name)`` for every import statement anywhere in ``tree`` (``""``
    as the name for ``import module``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ""
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join(here + ([base] if base else []))
            for alias in node.names:
                yield base, alias.name


def reexports(tree: ast.AST) -> dict[str, str]:
    """What a re-exporting ``__init__`` makes available: name -> the module defining it."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                out[alias.asname or alias.name] = node.module
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports. ``fwproxy/__init__.py``, which only
    re-exports, is not a node: importing a name from ``fwproxy`` is an edge to the module
    that defines it."""
    files = package_files()
    trees = {name: ast.parse(path.read_text(), str(path)) for name, path in files.items()}
    via_package = reexports(trees["fwproxy"])
    graph: dict[str, set[str]] = {name: set() for name in files if name != "fwproxy"}
    for name in graph:
        is_package = files[name].name == "__init__.py"
        for module, imported in imported_names(trees[name], name, is_package):
            if f"{module}.{imported}" in files:  # from fwproxy.filters import acl
                target = f"{module}.{imported}"
            elif module == "fwproxy":
                target = via_package.get(imported, "fwproxy")
            else:
                target = module
            # ``import fwproxy.a.b`` imports fwproxy.a too; the deepest known module is enough
            while target not in graph and "." in target:
                target = target.rpartition(".")[0]
            if target in graph and target != name:
                graph[name].add(target)
    return graph


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The modules that import each other: every strongly connected component of more than
    one module, sorted (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(components)


def shortest_cycle(graph: Mapping[str, set[str]], component: list[str]) -> list[str]:
    """A shortest cycle from the component's first module back to it."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {component}")  # pragma: no cover


def describe(graph: Mapping[str, set[str]], component: list[str]) -> str:
    """One line naming a cycle and every import among the component's modules (the ones to
    look at to break it)."""
    members = set(component)
    edges = [f"{v} -> {w}" for v in component for w in sorted(graph[v] & members)]
    return (
        f"{' -> '.join(shortest_cycle(graph, component))} "
        f"(all imports among {', '.join(component)}: {', '.join(edges)})"
    )


# -- the checker checks: it finds what it must, on graphs and sources made up here -------------


def test_cycles_are_found_and_named():
    graph = {
        "a": {"b"},
        "b": {"c"},
        "c": {"a", "d"},
        "d": set(),
        "e": {"f"},
        "f": {"e"},
        "g": {"a"},
    }
    assert cycles(graph) == [["a", "b", "c"], ["e", "f"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert describe(graph, ["a", "b", "c"]) == (
        "a -> b -> c -> a (all imports among a, b, c: a -> b, b -> c, c -> a)"
    )


def test_every_kind_of_import_is_counted():
    source = """
import fwproxy.alpha
from fwproxy import beta
from . import gamma
from .delta import thing
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from fwproxy.epsilon import Hidden
def f():
    from fwproxy.zeta import later
"""
    found = set(imported_names(ast.parse(source), "fwproxy.here", False))
    assert found == {
        ("fwproxy.alpha", ""),
        ("fwproxy", "beta"),
        ("fwproxy", "gamma"),
        ("fwproxy.delta", "thing"),
        ("typing", "TYPE_CHECKING"),
        ("fwproxy.epsilon", "Hidden"),
        ("fwproxy.zeta", "later"),
    }
    inside = set(imported_names(ast.parse("from .. import acl"), "fwproxy.filters.x", False))
    assert inside == {("fwproxy", "acl")}


def test_the_graph_resolves_names_the_package_reexports():
    graph = import_graph()
    assert "fwproxy" not in graph
    assert "fwproxy.config" in graph["fwproxy.cli"]
    assert "fwproxy.filters.acl" in graph["fwproxy.plugins"]
    assert "fwproxy.acl" in graph["fwproxy.filters.acl"]


# -- the rules --------------------------------------------------------------------------------


def test_no_import_cycles():
    graph = import_graph()
    found = [describe(graph, c) for c in cycles(graph)]
    assert not found, "import cycles in fwproxy: " + "; ".join(found)


def test_modules_and_classes_are_small():
    offenders = []
    for path in package_files().values():
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            offenders.append(
                f"{path.relative_to(REPO)}: {lines} lines (at most {MAX_MODULE_LINES})"
            )
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    offenders.append(
                        f"{path.relative_to(REPO)}: class {node.name}: {size} lines "
                        f"(at most {MAX_CLASS_LINES})"
                    )
    assert not offenders, "too big: " + "; ".join(offenders)


def test_module_is_found_by_its_name():
    assert is_test_module("tests.test_structure")
    assert not is_test_module("tests.test_nosuch_module")


def is_test_module(dotted: str) -> bool:
    path = REPO.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_every_module_names_its_existing_test_module():
    problems = []
    for path in package_files().values():
        headers = [m for m in map(HEADER.match, path.read_text().splitlines()[:3]) if m]
        if not headers:
            problems.append(f"{path.relative_to(REPO)} has no test-case-name header")
        for m in headers:
            for dotted in (s.strip() for s in m.group(1).split(",")):
                if not is_test_module(dotted):
                    problems.append(
                        f"{path.relative_to(REPO)} names {dotted}, which does not exist"
                    )
    assert not problems, "; ".join(problems)


def test_the_package_init_only_reexports():
    """The import graph skips ``fwproxy/__init__.py`` because it holds no code of its own."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    imported, exported = set(), []
    for i, node in enumerate(tree.body):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fwproxy."):
            imported.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["__all__"]:
            exported = ast.literal_eval(node.value)
        elif not (
            (i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
            or (isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "__version__")
        ):
            raise AssertionError(f"fwproxy/__init__.py:{node.lineno}: not a re-export")
    assert exported and set(exported) <= imported


# -- the dropin cache -------------------------------------------------------------------------


def git(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)


def test_no_dropin_cache_is_committed():
    listed = git("ls-files", "-z")
    assert listed.returncode == 0, listed.stderr
    caches = [p for p in listed.stdout.split("\0") if p.rpartition("/")[2] == "dropin.cache"]
    assert caches == [], f"dropin.cache is rebuilt on each machine; do not commit {caches}"


@pytest.mark.parametrize(
    "path",
    [
        "twisted/plugins/dropin.cache",
        "docs/examples/x/twisted/plugins/dropin.cache",
        "dropin.cache",
    ],
)
def test_dropin_caches_are_ignored_everywhere(path):
    assert git("check-ignore", "--no-index", "-q", path).returncode == 0, path
    assert git("check-ignore", "--no-index", "-q", path + ".txt").returncode == 1


def test_test_modules_have_unique_names() -> None:
    # tests/ has no packages: pytest imports each test file by its basename, so two files of
    # one name in different folders stop the whole run at collection
    names: dict[str, list[str]] = {}
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        names.setdefault(path.name, []).append(str(path.relative_to(REPO)))
    assert {n: p for n, p in names.items() if len(p) > 1} == {}
