"""The package's rooms depend on each other in one direction, and its torch-free faces stay torch-free.

Two checks:

- at run time, in a fresh interpreter: importing the nouns, the store, the dashboard's queries and
  the comparisons loads no torch (a process that only reads the database does not pay for it);
- statically, over the source with :mod:`ast`: who imports whom. Every import statement counts,
  wherever it is: at module level, inside a function (a lazy import is still a dependency, only a
  later one), and under ``if TYPE_CHECKING:`` (a type-only import still ties the two rooms' code
  together). ``from X import name`` counts as importing ``X``, and ``X.name`` too where that is
  a module of the package. Imports by string (``importlib.import_module``, the package's lazy ``__getattr__``)
  are not seen.

A room is a top-level part of the package: ``discovery.X`` for a subpackage or module ``X`` (the
package's own ``__init__`` is the lazy face over them, not a room).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "discovery"

TORCH_FREE = ("discovery.types", "discovery.store", "discovery.dashboard.queries", "discovery.analysis.compare")

HEAVY_ROOMS = (
    "discovery.scoring",
    "discovery.model",
    "discovery.tasks",
    "discovery.service",
    "discovery.search",
    "discovery.reference",
)

FORBIDDEN: list[tuple[tuple[str, ...], tuple[str, ...], str]] = [
    (
        ("discovery.store", "discovery.dashboard.queries", "discovery.engine"),
        HEAVY_ROOMS,
        "the store and the dashboard's queries read rows, the engine runs one forward: none of them "
        "needs models, tasks, scoring, searches or the service",
    ),
    (
        ("discovery.tasks",),
        ("discovery.scoring", "discovery.search", "discovery.store", "discovery.service"),
        "a task builds prompts; what scores, searches or stores them comes later",
    ),
    (
        ("discovery.model",),
        ("discovery.reference",),
        "``ref:`` specs are resolved one room up (discovery.reference.load_model), which uses the loader",
    ),
]
"""(importing modules, what they may not import, why): a module is under a prefix when it is the
prefix or inside it."""

ALLOWED_CYCLES: dict[frozenset[str], str] = {}
"""Cycles between rooms that are accepted, with the reason. None: every room's dependencies point one way."""


def _under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    """Whether ``name`` is a module or package of this package (``from X import name`` may import one)."""
    path = ROOT.joinpath(*name.split("."))
    return name.startswith("discovery.") and (path.with_suffix(".py").is_file() or (path / "__init__.py").is_file())


def _imported(path: Path) -> set[str]:
    """Every module name an import statement anywhere in the file names (relative imports resolved)."""
    module = _module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names if _is_module(f"{source}.{alias.name}"))
    return found


@cache
def imports() -> dict[str, set[str]]:
    """Module name -> the module names it imports, over every module of the package."""
    return {_module_name(p): _imported(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _room(name: str) -> str | None:
    parts = name.split(".")
    if len(parts) < 2 or parts[0] != "discovery":
        return None
    if (PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").is_file():
        return f"discovery.{parts[1]}"
    return None


def test_the_torch_free_faces_load_no_torch():
    loaded = "sorted(m for m in ('torch', 'transformers') if m in sys.modules)"
    code = f"import sys; import {', '.join(TORCH_FREE)}; print({loaded})"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"importing {', '.join(TORCH_FREE)} loaded {done.stdout.strip()}"


@pytest.mark.parametrize(
    ("importers", "forbidden", "why"), FORBIDDEN, ids=["store-dashboard-queries-engine", "tasks", "model"]
)
def test_no_room_imports_what_it_must_not(importers, forbidden, why):
    offending = sorted(
        f"{module} imports {target}"
        for module, targets in imports().items()
        if _under(module, importers)
        for target in targets
        if _under(target, forbidden)
    )
    assert not offending, f"{why}:\n" + "\n".join(offending)


def test_the_nouns_import_only_the_nouns_and_no_torch_numpy_or_sqlalchemy():
    offending = sorted(
        f"{module} imports {target}"
        for module, targets in imports().items()
        if _under(module, ["discovery.types"])
        for target in targets
        if (target.startswith("discovery") and not _under(target, ["discovery.types"]))
        or _under(target, ["torch", "numpy", "sqlalchemy"])
    )
    assert not offending, "discovery.types is the torch-free bottom of the package:\n" + "\n".join(offending)


def _room_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, targets in imports().items():
        source = _room(module)
        if source is None:
            continue
        graph.setdefault(source, set())
        for target in targets:
            room = _room(target)
            if room is not None and room != source:
                graph[source].add(room)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected groups of more than one room (rooms that reach each other)."""

    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reach = {room: reachable(room) for room in graph}
    groups = {frozenset({room} | {other for other in reach[room] if room in reach.get(other, ())}) for room in graph}
    return sorted((g for g in groups if len(g) > 1), key=sorted)


def test_no_import_cycles_between_rooms():
    graph = _room_graph()
    assert {"discovery.types", "discovery.store", "discovery.scoring"} <= set(graph)  # the walk found the rooms
    unexpected = [group for group in _cycles(graph) if group not in ALLOWED_CYCLES]
    detail = [
        f"{' <-> '.join(sorted(group))}: "
        + "; ".join(
            f"{module} imports {target}"
            for module, targets in sorted(imports().items())
            if _room(module) in group
            for target in sorted(targets)
            if _room(target) in group and _room(target) != _room(module)
        )
        for group in unexpected
    ]
    assert not unexpected, "import cycles between rooms:\n" + "\n".join(detail)
