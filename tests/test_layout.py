"""The house's import rules, read from the source: no import circle between the package's modules (imports
inside functions count too: a lazy import is still a dependency), and exporters/ depends only on the base
modules. A wrong-on-purpose graph shows the cycle finder finds one."""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import ROOT

PACKAGES = {"otcompress": ROOT / "pipeline", "otcompress.exporters": ROOT / "exporters"}
BASE = {"otcompress.errors", "otcompress.registry", "otcompress.artifacts", "otcompress.outputs", "otcompress.taps"}


def modules() -> dict[str, Path]:
    mods = {}
    for pkg, root in PACKAGES.items():
        for f in root.rglob("*.py"):
            rel = f.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([pkg, *parts])
            if pkg == "otcompress" and parts[:1] == ["exporters"]:
                continue
            mods[name] = f
    return mods


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `name` imports, anywhere in its file (a package counts as its __init__)."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                head = base[: len(base) - node.level + 1]
                mod = ".".join(head + ([mod] if mod else []))
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {n: imports(n, p, known) for n, p in mods.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import circle of g, or None. A package is its __init__: a submodule that imports names from its own
    package while the package imports the submodule is a circle too."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if state.get(m) is None:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_planted_circle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(g) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_in_the_package():
    g = graph()
    assert len(g) > 60  # the walk saw the package
    assert find_cycle(g) is None, " -> ".join(find_cycle(g))


def test_exporters_import_only_base_modules():
    g = graph()
    for name, deps in g.items():
        if name.startswith("otcompress.exporters"):
            outside = {d for d in deps if not d.startswith("otcompress.exporters")} - BASE
            assert not outside, f"{name} imports {sorted(outside)}"


def test_every_package_folder_is_installed():
    """A sub-package missing from pyproject's list works from the editable checkout and is absent from a wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join([pkg, *f.parent.relative_to(root).parts])
             for pkg, root in PACKAGES.items() for f in root.rglob("__init__.py")}
    assert found - listed == set(), f"not in pyproject.toml [tool.setuptools] packages: {sorted(found - listed)}"
    assert listed - found == set()
