"""The code's shape, checked: imports one way (backends -> core), no cycles, short functions.

Modules have no line cap: a cap split modules by count rather than by cohesion (and
invited ``# fmt: skip`` packing); cohesion decides a module's size.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: "no function over ~50 lines": the limit with that "~" in it.
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    found = {
        ".".join(("cfallow", *p.relative_to(ROOT / "cfallow").with_suffix("").parts)): p
        for p in (ROOT / "cfallow").rglob("*.py")
    }
    found.update(
        {
            ".".join(
                ("cfallow.backends", *p.relative_to(ROOT / "backends").with_suffix("").parts)
            ): p
            for p in (ROOT / "backends").rglob("*.py")
        }
    )
    return {name.removesuffix(".__init__"): path for name, path in found.items()}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every cfallow module ``name`` imports (absolute or relative), at any depth."""
    package = name.rsplit(".", 1)[0] if path.name != "__init__.py" else name
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1]])
                base = f"{base}.{node.module}" if node.module else base
            subs = {f"{base}.{a.name}" for a in node.names}
            known = subs & set(modules)
            # ``from pkg import submodule`` depends on the submodule, not on pkg's own code
            out |= known if known == subs else {base} | known
    return {m for m in out if m.startswith("cfallow")}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {n: {m for m in _imports(n, p, mods) if m in mods and m != n} for n, p in mods.items()}


def test_the_core_never_imports_a_backend() -> None:
    bad = {
        (n, m)
        for n, deps in _graph().items()
        if not n.startswith("cfallow.backends")
        for m in deps
        if m.startswith("cfallow.backends")
    }
    assert bad == set(), f"core modules importing backends: {sorted(bad)}"


def test_no_import_cycles() -> None:
    graph = _graph()
    seen: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        seen[node] = 1
        for dep in sorted(graph[node]):
            if seen.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep] if dep in stack else [node, dep])
            elif dep not in seen:
                visit(dep, [*stack, dep])
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            visit(node, [node])
    assert cycles == [], f"import cycles: {cycles}"


def test_the_graph_is_real() -> None:
    """Not vacuous: the walk sees the known edges."""
    graph = _graph()
    assert "cfallow.backend" in graph["cfallow.engine"]
    assert "cfallow.backends.aws.rules" in graph["cfallow.backends.aws.backend"]
    assert "cfallow.model" in graph["cfallow.backends.aws.backend"]
    assert any(m.startswith("cfallow.verify.") for m in graph["cfallow.verify"]) or any(
        n.startswith("cfallow.verify.") for n in graph
    )


def test_functions_stay_short() -> None:
    big: list[str] = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    big.append(f"{name}.{node.name}: {length} lines")
    assert big == [], "too big: " + "; ".join(big)
