"""Find the line of a TOML document where a config path is written.

msgspec reports a validation error by path (``$.models[2].tier``,
``$.providers[...].kind``) and not by line. `line_of` maps such a path back to
the source so an error can say "tlproxy.toml:42". It is a pure function over
the text: a small scanner that follows TOML's structure (``[table]``,
``[a.b]``, ``[[array.of.tables]]`` headers, dotted and quoted keys, inline
tables and arrays, which may span lines, strings of every kind) and notes the
line where each key, table and array element starts.

What it answers, for a syntactically valid document:

* a key that is present: the line of that key (for a table defined by a
  header, the header's line; for an element of an array of tables, its
  ``[[...]]`` header; for an element of an inline array, the line where the
  element starts);
* a key that is missing: the line of the nearest table on the path that is
  written (the place the key belongs), so "missing required field" and
  "unknown field" errors point at the right table;
* a path that leaves the document (an index past the end, a key below a
  scalar, a top-level table that does not exist): ``None``.

Path syntax: keys separated by dots, indexes in brackets, an optional ``$``
or ``$.`` prefix. ``[...]`` (how msgspec writes a dict key it does not name)
matches any key of the table: the first one under which the rest of the path
is found wins. A key containing dots may be quoted (``aliases."gpt-4.1"``);
unquoted, dotted segments are joined again when the split key is not found.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

__all__ = ["line_of", "parse_path"]

_WILDCARD = object()
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# Numbers, booleans, dates: up to the next separator, end of line or comment.
_SCALAR = re.compile(r"[^,\]}\r\n#]+")
_PATH_TOKEN = re.compile(
    r'\s*(?:\[(?P<index>\d+)\]|\[(?P<wild>\.\.\.)\]|"(?P<dq>(?:[^"\\]|\\.)*)"'
    r"|'(?P<sq>[^']*)'|(?P<bare>[^.\[\]\"']+))\s*(?P<dot>\.)?"
)
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


@dataclass
class _Node:
    line: int
    kind: str  # "table", "array" or "value"
    children: dict[str, _Node] = field(default_factory=dict)
    items: list[_Node] = field(default_factory=list)
    # A table created only because a longer header or dotted key named it.
    implicit: bool = False


class _ScanError(Exception):
    pass


class _Scanner:
    """Just enough of a TOML parser to know where everything starts."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line_starts = [0] + [m.end() for m in re.finditer(r"\n", text)]
        self.root = _Node(line=0, kind="table")

    def line(self, pos: int | None = None) -> int:
        return bisect.bisect_right(self.line_starts, self.pos if pos is None else pos)

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos:self.pos + n]

    def skip_space(self, newlines: bool = False) -> None:
        """Skip blanks and comments; newlines too when `newlines`."""
        text = self.text
        while self.pos < len(text):
            ch = text[self.pos]
            if ch in " \t" or (newlines and ch in "\r\n"):
                self.pos += 1
            elif ch == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            else:
                break

    def expect(self, token: str) -> None:
        if not self.text.startswith(token, self.pos):
            raise _ScanError(f"expected {token!r} at line {self.line()}")
        self.pos += len(token)

    # -- document ----------------------------------------------------------

    def document(self) -> _Node:
        current = self.root
        while True:
            self.skip_space(newlines=True)
            if self.pos >= len(self.text):
                return self.root
            if self.text.startswith("[[", self.pos):
                current = self.header(array=True)
            elif self.peek() == "[":
                current = self.header(array=False)
            else:
                self.key_value(current)
                self.skip_space()
                if self.pos < len(self.text) and self.peek() not in "\r\n":
                    raise _ScanError(f"junk after a value at line {self.line()}")

    def header(self, *, array: bool) -> _Node:
        line = self.line()
        self.expect("[[" if array else "[")
        keys = self.key()
        self.skip_space()
        self.expect("]]" if array else "]")
        node = self.root
        for part in keys[:-1]:
            node = self.descend(node, part, line)
        last = keys[-1]
        child = node.children.get(last)
        if array:
            if child is None:
                child = node.children[last] = _Node(line=line, kind="array")
            if child.kind != "array":
                raise _ScanError(f"{last!r} is not an array of tables at line {line}")
            element = _Node(line=line, kind="table")
            child.items.append(element)
            return element
        if child is None:
            child = node.children[last] = _Node(line=line, kind="table")
        elif child.kind == "table" and child.implicit:
            child.line, child.implicit = line, False
        elif child.kind != "table":
            raise _ScanError(f"{last!r} is not a table at line {line}")
        return child

    def descend(self, node: _Node, key: str, line: int) -> _Node:
        child = node.children.get(key)
        if child is None:
            child = node.children[key] = _Node(line=line, kind="table", implicit=True)
            return child
        if child.kind == "array" and child.items:
            return child.items[-1]
        if child.kind != "table":
            raise _ScanError(f"{key!r} is not a table at line {line}")
        return child

    def key_value(self, table: _Node) -> None:
        line = self.line()
        keys = self.key()
        self.skip_space()
        self.expect("=")
        self.skip_space()
        node = table
        for part in keys[:-1]:
            node = self.descend(node, part, line)
        value = self.value()
        value.line = line
        node.children[keys[-1]] = value

    def key(self) -> list[str]:
        parts = []
        while True:
            self.skip_space()
            ch = self.peek()
            if ch == '"':
                parts.append(self.basic_string())
            elif ch == "'":
                parts.append(self.literal_string())
            else:
                match = _BARE_KEY.match(self.text, self.pos)
                if not match:
                    raise _ScanError(f"expected a key at line {self.line()}")
                parts.append(match.group())
                self.pos = match.end()
            self.skip_space()
            if self.peek() != ".":
                return parts
            self.pos += 1

    # -- values ------------------------------------------------------------

    def value(self) -> _Node:
        line = self.line()
        ch = self.peek()
        if ch == "{":
            return self.inline_table()
        if ch == "[":
            return self.array()
        if self.text.startswith('"""', self.pos) or self.text.startswith("'''", self.pos):
            self.multiline_string()
        elif ch == '"':
            self.basic_string()
        elif ch == "'":
            self.literal_string()
        else:
            match = _SCALAR.match(self.text, self.pos)
            if not match or not match.group().strip():
                raise _ScanError(f"expected a value at line {line}")
            self.pos = match.start() + len(match.group().rstrip())
        return _Node(line=line, kind="value")

    def inline_table(self) -> _Node:
        node = _Node(line=self.line(), kind="table")
        self.expect("{")
        self.skip_space(newlines=True)
        if self.peek() == "}":
            self.pos += 1
            return node
        while True:
            self.skip_space(newlines=True)
            self.key_value(node)
            self.skip_space(newlines=True)
            if self.peek() == ",":
                self.pos += 1
                self.skip_space(newlines=True)
                if self.peek() == "}":  # a trailing comma (TOML 1.1)
                    self.pos += 1
                    return node
                continue
            self.expect("}")
            return node

    def array(self) -> _Node:
        node = _Node(line=self.line(), kind="array")
        self.expect("[")
        while True:
            self.skip_space(newlines=True)
            if self.peek() == "]":
                self.pos += 1
                return node
            node.items.append(self.value())
            self.skip_space(newlines=True)
            if self.peek() == ",":
                self.pos += 1
                continue
            self.skip_space(newlines=True)
            self.expect("]")
            return node

    def basic_string(self) -> str:
        start = self.pos
        self.expect('"')
        out: list[str] = []
        text = self.text
        while self.pos < len(text):
            ch = text[self.pos]
            if ch == '"':
                self.pos += 1
                return "".join(out)
            if ch == "\\":
                nxt = text[self.pos + 1:self.pos + 2]
                if nxt in ("u", "U"):
                    width = 4 if nxt == "u" else 8
                    digits = text[self.pos + 2:self.pos + 2 + width]
                    try:
                        out.append(chr(int(digits, 16)))
                    except ValueError:
                        raise _ScanError(f"bad escape at line {self.line()}") from None
                    self.pos += 2 + width
                    continue
                out.append(_ESCAPES.get(nxt, nxt))
                self.pos += 2
                continue
            if ch == "\n":
                break
            out.append(ch)
            self.pos += 1
        raise _ScanError(f"unterminated string at line {self.line(start)}")

    def multiline_string(self) -> None:
        start = self.pos
        quote = self.text[self.pos]
        self.pos += 3
        text = self.text
        while self.pos < len(text):
            if quote == '"' and text[self.pos] == "\\":
                self.pos += 2
                continue
            if text.startswith(quote * 3, self.pos):
                self.pos += 3
                # Up to two quotes right before the delimiter belong to the string.
                for _ in range(2):
                    if text.startswith(quote, self.pos):
                        self.pos += 1
                return
            self.pos += 1
        raise _ScanError(f"unterminated string at line {self.line(start)}")

    def literal_string(self) -> str:
        start = self.pos
        self.expect("'")
        end = self.text.find("'", self.pos)
        newline = self.text.find("\n", self.pos)
        if end < 0 or 0 <= newline < end:
            raise _ScanError(f"unterminated string at line {self.line(start)}")
        self.pos = end + 1
        return self.text[start + 1:end]


def parse_path(path: str) -> list[str | int | object] | None:
    """``$.a.b[2]["c.d"]`` -> ``["a", "b", 2, "c.d"]``; ``[...]`` is a wildcard."""
    path = path.strip()
    if path.startswith("$"):
        path = path[1:].lstrip(".")
    segments: list[str | int | object] = []
    pos = 0
    expect_key = True
    while pos < len(path):
        match = _PATH_TOKEN.match(path, pos)
        if not match or match.end() == pos:
            return None
        if match.group("index") is not None:
            segments.append(int(match.group("index")))
        elif match.group("wild") is not None:
            segments.append(_WILDCARD)
        else:
            if not expect_key:
                return None
            if match.group("dq") is not None:
                key = re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)),
                             match.group("dq"))
            elif match.group("sq") is not None:
                key = match.group("sq")
            else:
                key = match.group("bare").strip()
            segments.append(key)
        expect_key = match.group("dot") is not None
        pos = match.end()
        if not expect_key and pos < len(path) and path[pos] != "[":
            return None
    return segments or None


def _resolve(node: _Node, segments: list[str | int | object]) -> tuple[int | None, bool]:
    """(line, found): the line of the path, or of the nearest written table above it."""
    if not segments:
        return node.line, True
    head, rest = segments[0], segments[1:]
    fallback = node.line if node.kind == "table" and node.line > 0 else None
    if head is _WILDCARD:
        if node.kind != "table":
            return None, False
        partial: int | None = None
        for child in node.children.values():
            line, found = _resolve(child, rest)
            if found:
                return line, True
            if partial is None and line is not None:
                partial = line
        return (partial if partial is not None else fallback), False
    if isinstance(head, int):
        if node.kind != "array" or head >= len(node.items):
            return None, False
        return _resolve(node.items[head], rest)
    if node.kind != "table":
        return None, False
    assert isinstance(head, str)
    if head in node.children:
        return _resolve(node.children[head], rest)
    # A key with dots in it, split by an unquoted path: join it back.
    joined = head
    for i, segment in enumerate(rest):
        if not isinstance(segment, str):
            break
        joined += "." + segment
        if joined in node.children:
            return _resolve(node.children[joined], rest[i + 1:])
    return fallback, False


def line_of(text: str, path: str) -> int | None:
    """The 1-based line where `path` is written in the TOML `text` (see the module doc)."""
    segments = parse_path(path)
    if segments is None:
        return None
    scanner = _Scanner(text)
    try:
        root = scanner.document()
    except (_ScanError, IndexError, RecursionError):
        # Invalid TOML: answer from what was read before the error.
        root = scanner.root
    line, _ = _resolve(root, segments)
    return line if line else None
