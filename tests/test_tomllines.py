"""Tests for :mod:`fwproxy.tomllines`: the line of every key, table and value in TOML text."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fwproxy.tomllines import key_lines

REPO = Path(__file__).resolve().parent.parent

TRICKY = '''\
# a comment with [brackets] and key = "value"
title = "top [not a table]" # trailing
[acl.lan]
src = [ "10.0.0.0/8", # comment ]
  '192.168.0.0/16',
]

[acl."a.b"]
dst = ["x"]

[acl]
inline = { src = ["1.2.3.4"], port = [
  80,
  443 ] }
'quoted key' = 1
dotted.key.here = true

[text]
ml = """
line with ] and "quotes" and = and [x]
still [the string] \\"""
"""
lit = \'\'\'
[not.a.table]
\'\'\'
date = 1979-05-27 07:32:00Z
after = [1, 2]

[[filters]]
name = "a"

[[filters]]
name = "b"
[filters.options]
x = 1
[[filters.more]]
y = 2
'''


def test_tricky_document():
    assert tomllib.loads(TRICKY)  # it is valid TOML
    lines = key_lines(TRICKY)
    expected = {
        ("title",): 2,
        ("acl",): 3,
        ("acl", "lan"): 3,
        ("acl", "lan", "src"): 4,
        ("acl", "lan", "src", 0): 4,
        ("acl", "lan", "src", 1): 5,
        ("acl", "a.b"): 8,
        ("acl", "a.b", "dst", 0): 9,
        ("acl", "inline", "src", 0): 12,
        ("acl", "inline", "port"): 12,
        ("acl", "inline", "port", 0): 13,
        ("acl", "inline", "port", 1): 14,
        ("acl", "quoted key"): 15,
        ("acl", "dotted", "key", "here"): 16,
        ("text", "ml"): 19,
        ("text", "lit"): 23,
        ("text", "date"): 26,
        ("text", "after", 1): 27,
        ("filters",): 29,
        ("filters", 0, "name"): 30,
        ("filters", 1): 32,
        ("filters", 1, "name"): 33,
        ("filters", 1, "options", "x"): 35,
        ("filters", 1, "more", 0, "y"): 37,
    }
    assert {path: lines.get(path) for path in expected} == expected
    assert ("not", "a", "table") not in lines
    assert ("acl", "a", "b") not in lines


def test_crlf_line_ends():
    text = "[a]\r\nx = 1\r\ny = [\r\n  2,\r\n]\r\n"
    assert key_lines(text) == {("a",): 1, ("a", "x"): 2, ("a", "y"): 3, ("a", "y", 0): 4}


def test_text_it_cannot_follow_gives_what_was_found_before_it():
    assert key_lines("[a]\nx = 1\n[b\ny = 2\n") == {("a",): 1, ("a", "x"): 2}
    assert key_lines("") == {}


def shipped_toml() -> list[Path]:
    paths = [*REPO.glob("etc/*.toml"), *REPO.glob("fwproxy/*.toml"), *REPO.glob("docs/**/*.toml")]
    assert paths
    return paths


def leaf_paths(value: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in leaf_paths(v, path + (k,))] or [path]
    if isinstance(value, list) and value:
        return [p for i, v in enumerate(value) for p in leaf_paths(v, path + (i,))]
    return [path]


def test_every_value_of_the_shipped_files_has_a_line():
    for path in shipped_toml():
        text = path.read_text()
        lines = key_lines(text)
        for leaf in leaf_paths(tomllib.loads(text)):
            assert leaf in lines, (path, leaf)
            key = leaf[-1]
            if isinstance(key, str):
                assert key in text.splitlines()[lines[leaf] - 1], (path, leaf)


# -- generated documents, written in every style, with the line of each value noted ------------

BARE = re.compile(r"[A-Za-z0-9_-]+")
KEYS = st.one_of(
    st.from_regex(BARE, fullmatch=True).filter(lambda k: len(k) < 9),
    st.text(alphabet="ab .#=[]{}\"'\\\u00e9", min_size=1, max_size=5),
)
STRINGS = st.text(alphabet="ab #=[]{},\"'\\\n\u00e9", max_size=8)
SCALARS = st.one_of(
    st.integers(), st.booleans(), STRINGS, st.floats(allow_nan=False, allow_infinity=False)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=3)),
    max_leaves=8,
)
DOCUMENTS = st.dictionaries(KEYS, st.dictionaries(KEYS, VALUES, max_size=3), max_size=3)


class Writer:
    """Writes TOML, choosing a style for each part, and notes the line where each path is."""

    def __init__(self, draw: Any) -> None:
        self.draw = draw
        self.parts: list[str] = []
        self.line = 1
        self.lines: dict[tuple, int] = {}

    def write(self, s: str) -> None:
        self.parts.append(s)
        self.line += s.count("\n")

    def note(self, path: tuple) -> None:
        self.lines.setdefault(path, self.line)

    def choose(self) -> bool:
        return self.draw(st.booleans())

    def key(self, k: str) -> None:
        self.write(k if BARE.fullmatch(k) and self.choose() else json.dumps(k))

    def document(self, doc: dict) -> str:
        for name, table in doc.items():
            self.write("\n" if self.choose() else "\n# [comment] = 1\n")
            self.note((name,))
            self.write("[")
            self.key(name)
            self.write("]\n")
            for k, v in table.items():
                self.note((name, k))
                self.key(k)
                self.write(" = ")
                self.value(v, (name, k))
                self.write("  # } ] [x]\n" if self.choose() else "\n")
        return "".join(self.parts)

    def value(self, v: Any, path: tuple) -> None:
        if isinstance(v, bool):
            self.write("true" if v else "false")
        elif isinstance(v, (int, float)):
            self.write(repr(v))
        elif isinstance(v, str):
            self.string(v)
        elif isinstance(v, list):
            multiline = self.choose()
            self.write("[")
            for i, item in enumerate(v):
                if multiline:
                    self.write("\n  # ]\n  " if self.choose() else "\n  ")
                self.note(path + (i,))
                self.value(item, path + (i,))
                self.write(",")
            self.write("\n]" if multiline else "]")
        else:
            self.write("{")
            for i, (k, item) in enumerate(v.items()):
                self.write(", " if i else "")
                self.note(path + (k,))
                self.key(k)
                self.write(" = ")
                self.value(item, path + (k,))
            self.write("}")

    def string(self, v: str) -> None:
        style = self.draw(st.sampled_from(["basic", "literal", "ml-basic", "ml-literal"]))
        multiline_ok = not v.startswith("\n")  # a newline right after the quotes is dropped
        if style == "literal" and "'" not in v and "\n" not in v:
            self.write(f"'{v}'")
        elif style == "ml-literal" and multiline_ok and "'''" not in v + "'":
            self.write(f"'''{v}'''")
        elif style == "ml-basic" and multiline_ok:
            self.write('"""' + v.replace("\\", "\\\\").replace('"', '\\"') + '"""')
        else:
            self.write(json.dumps(v))


@settings(max_examples=150, deadline=None)
@given(st.data(), DOCUMENTS)
def test_generated_documents(data, doc):
    writer = Writer(data.draw)
    text = writer.document(doc)
    assert tomllib.loads(text) == doc
    assert key_lines(text) == writer.lines
