"""The README's Layout map is drawn from the code: every room and module of the package is named in it,
and everything it names exists (so a moved or added module fails here until the map says so)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def layout_block() -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^## Layout\n.*?^```\n(.*?)^```", readme, re.S | re.M)
    assert match, "README.md has no '## Layout' section with a code block"
    return match.group(1)


def mapped_paths(block: str) -> set[str]:
    """Paths the map names: an indented tree, two spaces a level, each line ``name  description``."""
    paths: set[str] = set()
    parents: list[str] = []
    for line in block.splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.strip().split()[0]
        parents = parents[:depth]
        if name.endswith("/"):
            parents.append(name)
        for part in name.split(","):  # `a.py,b.py` names several modules of one folder
            paths.add("".join(parents[:depth]) + part)
    return paths


def package_paths() -> set[str]:
    """The package's rooms (folders with an ``__init__.py``) and modules, as the map spells them."""
    paths: set[str] = set()
    for path in (ROOT / "discovery").rglob("*.py"):
        rel = path.relative_to(ROOT)
        if "__pycache__" in rel.parts or path.name in ("__init__.py", "__main__.py"):
            continue
        paths.add(str(rel))
    for init in (ROOT / "discovery").rglob("__init__.py"):
        paths.add(str(init.parent.relative_to(ROOT)) + "/")
    return paths


def test_every_room_and_module_of_the_package_is_on_the_map():
    missing = sorted(package_paths() - mapped_paths(layout_block()))
    assert not missing, f"README's Layout map lacks {missing}"


def test_everything_on_the_map_exists():
    stale = sorted(p for p in mapped_paths(layout_block()) if not (ROOT / p).exists())
    assert not stale, f"README's Layout map names what no longer exists: {stale}"
