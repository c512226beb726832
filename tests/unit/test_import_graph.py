"""The import graph of `tlproxy`, read from the source: the arrows point one way.

What counts as an import of module B by module A: every ``import`` and
``from ... import`` statement in A's source that names B, wherever it is
written.

* **Inside a function, it counts.** Moving an import into a function is how a
  cycle is dodged at import time, not how it is removed: the two modules still
  need each other.
* **Under ``if TYPE_CHECKING:``, it counts too.** Such an import never runs, so
  it cannot fail at import time; but a module that names its caller's types in
  its annotations depends on that caller as much as one that calls it, and
  ``TYPE_CHECKING`` is the other usual way to hide a cycle rather than break
  it. The graph is the design's, not only the interpreter's.
* **An import names one module:** ``from .plan import Answer`` is an arrow to
  ``tlproxy.sim.plan``; ``from . import core`` one to the submodule
  ``tlproxy.sim.core``; ``from . import X``, where X is a name defined in the
  package's ``__init__``, one to the package. Importing a submodule runs its
  package's ``__init__`` first, but that is not an arrow: otherwise every
  package whose ``__init__`` re-exports its submodules would be a cycle by
  construction. A submodule that imports names from its own package's
  ``__init__`` does draw the arrow (a cycle, when that ``__init__`` imports it).
* Modules outside `tlproxy` (the standard library, third parties) are not nodes.

The whole package is acyclic: `KNOWN_CYCLES` is empty, and a new cycle fails
(it is broken, never added there). The simulated upstream (`tlproxy.sim`) is
layered besides: its arrows point down its layers.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

import tlproxy

Graph = dict[str, set[str]]

PACKAGE = Path(tlproxy.__file__).parent

# The cycles the package still has, each as printed on failure (module names
# without the ``tlproxy.`` prefix, starting from the smallest name): none, and
# it stays so. Break a new cycle; never add it here.
KNOWN_CYCLES: set[str] = set()

# The simulated upstream's layers, top to bottom: a module may import only
# modules of the layers below its own (the package re-exports, the dispatcher
# picks a protocol, each protocol builds on the core, the core on the planner).
SIM_LAYERS = (
    {"tlproxy.sim"},
    {"tlproxy.sim.upstream"},
    {"tlproxy.sim.openai", "tlproxy.sim.anthropic", "tlproxy.sim.gemini"},
    {"tlproxy.sim.core"},
    {"tlproxy.sim.plan"},
)


def module_names(root: Path) -> dict[str, Path]:
    """Every module of the package at `root`, by dotted name (a package by its own)."""
    modules: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported(name: str, path: Path, modules: Mapping[str, Path]) -> set[str]:
    """The package's modules that the module `name` (source at `path`) imports."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # `.` is the package `name` is in (or is, for an `__init__`).
                base = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:
                    found.add(f"{source}.{alias.name}")  # a submodule
                elif source in modules:
                    found.add(source)  # a name defined in that module
    found.discard(name)
    return found


def import_graph(root: Path) -> Graph:
    """Module -> the package's modules it imports, for the package at `root`."""
    modules = module_names(root)
    return {name: imported(name, path, modules) for name, path in modules.items()}


def cycles(graph: Mapping[str, Iterable[str]]) -> set[tuple[str, ...]]:
    """Every elementary cycle, each once: from its smallest module, back to it.

    A depth-first walk from each module through larger ones only finds every
    cycle exactly once; the package is small enough for that to be instant.
    """
    found: set[tuple[str, ...]] = set()
    for start in sorted(graph):
        stack: list[tuple[str, tuple[str, ...]]] = [(start, (start,))]
        while stack:
            node, path = stack.pop()
            for target in graph.get(node, ()):
                if target == start:
                    found.add((*path, start))
                elif target > start and target not in path:
                    stack.append((target, (*path, target)))
    return found


def show(cycle: tuple[str, ...], prefix: str = "tlproxy.") -> str:
    return " -> ".join(name.removeprefix(prefix) for name in cycle)


def canonical(text: str) -> str:
    """A cycle as `show` prints it, from whichever module it was written from."""
    names = [n.strip() for n in text.split("->")][:-1]
    first = names.index(min(names))
    names = names[first:] + names[:first]
    return " -> ".join([*names, names[0]])


# The reader itself, on a small package written for the purpose.
FIXTURE = {
    "pkg/__init__.py": "from .a import A\n",
    "pkg/a.py": "import json\nimport pkg.b\nA = 1\n",
    "pkg/b.py": "def f():\n    from . import c\n",
    "pkg/c.py": (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .sub.d import D\n"
    ),
    "pkg/sub/__init__.py": "from .. import A\nfrom . import d\n",
    "pkg/sub/d.py": "from ..a import A\nfrom pkg import b\nfrom .. import c as renamed\nD = A\n",
    "pkg/e.py": "from . import missing\ntry:\n    import pkg.c\nexcept ImportError:\n    pass\n",
}
FIXTURE_GRAPH = {
    "pkg": {"pkg.a"},
    "pkg.a": {"pkg.b"},  # the standard library is not a node
    "pkg.b": {"pkg.c"},  # from inside a function
    "pkg.c": {"pkg.sub.d"},  # under TYPE_CHECKING
    "pkg.sub": {"pkg", "pkg.sub.d"},  # `from .. import A`: a name from the package
    "pkg.sub.d": {"pkg.a", "pkg.b", "pkg.c"},  # `from pkg import b`: a submodule
    "pkg.e": {"pkg", "pkg.c"},  # an unknown name reads as the package's
}


def test_the_reader_counts_every_import_statement_of_the_package(tmp_path: Path) -> None:
    for relative, text in FIXTURE.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    assert import_graph(tmp_path / "pkg") == FIXTURE_GRAPH


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, set()),
        ({"a": {"b"}, "b": {"a"}}, {("a", "b", "a")}),
        ({"b": {"a"}, "a": {"c"}, "c": {"b"}}, {("a", "c", "b", "a")}),
        # Two cycles through one module, and a diamond that is not one.
        ({"a": {"b", "c"}, "b": {"a", "d"}, "c": {"a", "d"}, "d": set()},
         {("a", "b", "a"), ("a", "c", "a")}),
        ({"a": {"b"}, "b": {"c"}, "c": {"a", "b"}}, {("a", "b", "c", "a"), ("b", "c", "b")}),
    ],
)
def test_cycles_are_found_once_each(
    graph: dict[str, set[str]], expected: set[tuple[str, ...]]
) -> None:
    assert cycles(graph) == expected


def test_a_known_cycle_matches_from_any_module() -> None:
    assert canonical("engine -> app -> engine") == "app -> engine -> app"
    assert canonical("config -> policy -> loader -> config") == (
        "config -> policy -> loader -> config")
    assert canonical("policy -> config -> loader -> policy") == (
        "config -> loader -> policy -> config")


def not_down(graph: Mapping[str, Iterable[str]], layers: Iterable[set[str]]) -> list[str]:
    """The arrows among `layers`' modules that do not point to a lower layer."""
    layer = {name: depth for depth, names in enumerate(layers) for name in names}
    return sorted(
        f"{source} -> {target}"
        for source in layer for target in graph.get(source, ())
        if target in layer and layer[target] <= layer[source]
    )


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"top": {"mid", "low", "other"}, "mid": {"low"}, "low": set()}, []),
        ({"top": {"mid"}, "mid": {"top"}}, ["mid -> top"]),
        ({"mid": {"mid2"}, "mid2": set()}, ["mid -> mid2"]),  # one layer: no arrows inside
        ({"low": {"top"}}, ["low -> top"]),
    ],
)
def test_layers_allow_only_arrows_down(graph: Graph, expected: list[str]) -> None:
    assert not_down(graph, [{"top"}, {"mid", "mid2"}, {"low"}]) == expected


def test_the_simulated_upstream_has_no_cycle_and_its_arrows_point_down() -> None:
    graph = import_graph(PACKAGE)
    sim = {name for name in graph if name == "tlproxy.sim" or name.startswith("tlproxy.sim.")}
    assert sim == set().union(*SIM_LAYERS), "SIM_LAYERS must place every sim module once"
    subgraph = {name: graph[name] & sim for name in sim}
    found = sorted(show(cycle) for cycle in cycles(subgraph))
    assert not found, "import cycles in the simulated upstream:\n  " + "\n  ".join(found)
    upward = not_down(subgraph, SIM_LAYERS)
    assert not upward, "sim imports that do not point down its layers:\n  " + "\n  ".join(upward)


def test_the_package_is_acyclic() -> None:
    assert not KNOWN_CYCLES, "the package is acyclic: break a cycle, never list it"
    found = {show(cycle) for cycle in cycles(import_graph(PACKAGE))}
    known = {canonical(cycle) for cycle in KNOWN_CYCLES}
    new, gone = sorted(found - known), sorted(known - found)
    message = []
    if new:
        message += ["new import cycles (break them; do not add them to KNOWN_CYCLES):",
                    *(f"  {cycle}" for cycle in new)]
    if gone:
        message += ["cycles that no longer exist (remove them from KNOWN_CYCLES):",
                    *(f"  {cycle}" for cycle in gone)]
    assert found == known, "\n".join(message)


def test_the_config_types_import_nothing_of_the_package() -> None:
    # Every module reads the config's types, so they must read none of theirs:
    # the checks (`config_check`) and the file reading (`config_load`) sit above.
    graph = import_graph(PACKAGE)
    assert graph["tlproxy.config"] == set()
    assert "tlproxy.config_check" in graph["tlproxy.config_load"]
