"""The code's shape, checked: imports one way (backends -> kit, application -> kit), no
cycles, short functions; the layout (the kit at the top of cfallow/, the application in its
subpackages, one package per backend family); and a core that names no backend.

Modules have no line cap: a cap split modules by count rather than by cohesion (and
invited formatter escapes packing lines); cohesion decides a module's size.
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
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
            # ``from pkg import submodule`` runs pkg's own code (its __init__) first too
            out |= {base} | (subs & set(modules))
    return {m for m in out if m.startswith("cfallow")}


def _graph() -> dict[str, set[str]]:
    """Module -> the cfallow modules importing it runs, less its own packages (which Python
    has run before the module itself)."""
    mods = _modules()
    return {
        n: {m for m in _imports(n, p, mods) if m in mods and m != n and not n.startswith(f"{m}.")}
        for n, p in mods.items()
    }


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
    """Not vacuous: the walk sees the known edges, also a package's own code run by
    ``from package import submodule``."""
    graph = _graph()
    assert {"cfallow.report", "cfallow.report.table"} <= graph["cfallow.cli.commands"]
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


# -- the kit and the application ---------------------------------------------------------

#: The kit a plugin builds on: the top of cfallow/ and the netfilter library.
KIT = {
    "cfallow",
    "cfallow._moved",
    "cfallow._version",
    "cfallow.backend",
    "cfallow.errors",
    "cfallow.files",
    "cfallow.fs",
    "cfallow.hostlock",
    "cfallow.install",
    "cfallow.listfile",
    "cfallow.model",
    "cfallow.plugins",
    "cfallow.progress",
    "cfallow.runner",
    "cfallow.section",
    "cfallow.testing",
    "cfallow.trust",
}
#: Top-level modules of the application: the engine (the kit's testing runs it), the
#: command's entry point (``-m`` too) and the in-step record it asks before anything else.
TOP_APPLICATION = {"cfallow.engine", "cfallow.__main__", "cfallow.instep"}
APPLICATION = ("cfallow.cli", "cfallow.fetch", "cfallow.report", "cfallow.verify")


def _is_kit(name: str) -> bool:
    return name in KIT or name == "cfallow.netfilter" or name.startswith("cfallow.netfilter.")


def test_the_top_of_cfallow_is_the_kit_and_the_application_sits_in_its_subpackages() -> None:
    mods = _modules()
    top = {n for n, p in mods.items() if p.parent == ROOT / "cfallow" and p.suffix == ".py"}
    assert top == KIT | TOP_APPLICATION, sorted(top ^ (KIT | TOP_APPLICATION))
    packages = {p.parent.name for p in (ROOT / "cfallow").glob("*/__init__.py")}
    assert packages == {"netfilter", *(a.split(".")[1] for a in APPLICATION)}


def test_the_kit_imports_nothing_of_the_application() -> None:
    """Only cfallow.testing runs the engine (the contract drives a backend through it)."""
    bad = sorted(
        (n, m)
        for n, deps in _graph().items()
        if _is_kit(n)
        for m in deps
        if not _is_kit(m) and (n, m) != ("cfallow.testing", "cfallow.engine")
    )
    assert bad == [], f"kit modules importing the application: {bad}"


def test_backends_build_on_the_kit_alone() -> None:
    bad = sorted(
        (n, m)
        for n, deps in _graph().items()
        if n.startswith("cfallow.backends")
        for m in deps
        if not m.startswith("cfallow.backends") and not _is_kit(m)
    )
    assert bad == [], f"backends importing the application: {bad}"


# -- one package per backend family, each entry point loads --------------------------------


def _declared_entry_points() -> dict[str, str]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.9/3.10
        import tomli as tomllib
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return dict(meta["project"]["entry-points"]["cfallow.backends"])


def test_backends_is_one_package_per_family_each_exporting_its_backend_class() -> None:
    from cfallow.backend import Backend

    root = ROOT / "backends"
    loose = sorted(p.name for p in root.glob("*.py") if p.name != "__init__.py")
    assert loose == [], f"modules outside a family package: {loose}"
    families = sorted(p.parent.name for p in root.glob("*/__init__.py"))
    dirs = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert families == dirs, "a directory under backends/ that is not a package"
    for fam in families:
        pkg = importlib.import_module(f"cfallow.backends.{fam}")
        exported = [getattr(pkg, n) for n in getattr(pkg, "__all__", ())]
        assert any(isinstance(c, type) and issubclass(c, Backend) for c in exported), (
            f"cfallow.backends.{fam} exports no Backend class in __all__"
        )


def test_every_entry_point_loads_a_backend_of_its_name_from_its_family() -> None:
    from cfallow.backend import Backend

    declared = _declared_entry_points()
    assert {"iptables", "nftables", "firewalld", "fail2ban", "aws", "nginx"} <= set(declared)
    for name, value in declared.items():
        module, _, attr = value.partition(":")
        assert re.fullmatch(r"cfallow\.backends\.\w+(\.\w+)?", module), (name, value)
        cls = getattr(importlib.import_module(module), attr)
        assert isinstance(cls, type) and issubclass(cls, Backend), value
        assert cls.name == name, f"{value}: name {cls.name!r}, entry point {name!r}"


# -- the core names no backend ------------------------------------------------------------

#: The backends' names (the built-in entry points, and the next one's).
BACKEND_NAMES = (
    "iptables",
    "nftables",
    "firewalld",
    "fail2ban",
    "aws",
    "aws-nacl",
    "aws-wafv2",
    "nginx",
    "apache",
    "haproxy",
    "caddy",
    "modsecurity",
)
#: The core's string constants that may say a backend's name: (modules, names, why).
#: ``[backends.NAME]`` stands for a config section; ``PACKAGE.*``: every module in it.
NAMED_IN_THE_CORE: tuple[tuple[frozenset[str], frozenset[str], str], ...] = (
    (
        frozenset({"cfallow.cli.config"}),
        frozenset({"iptables"}),
        "the documented default: without a config file, cfallow syncs the iptables backend",
    ),
    (
        frozenset({"cfallow.netfilter.*"}),
        frozenset({"iptables", "nftables"}),
        "the kernel's packet filters and their tools (nft -j, iptables-save), which the "
        "netfilter library reads: not the backends of the same name",
    ),
    (
        frozenset({"cfallow.verify", "cfallow.verify.snapshot", "cfallow.verify.xpath"}),
        frozenset({"iptables", "nftables"}),
        "the kernel's packet filters and their tools, in which verify loads the host's "
        "ruleset and names the rule that decided: not the backends of the same name",
    ),
    (
        frozenset({"cfallow.netfilter.host"}),
        frozenset({"firewalld"}),
        "firewalld's own nft table (table inet firewalld), recognised in the host's ruleset",
    ),
    (
        frozenset({"cfallow.netfilter.advice"}),
        frozenset({"iptables", "nftables", "firewalld", "[backends.nftables]"}),
        "which backend and mode fit this host: moving into the backends (issue 24)",
    ),
)


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            # the node's docstring, and the attribute docstrings after assignments
            for i, stmt in enumerate(body):
                if (
                    isinstance(stmt, ast.Expr)
                    and isinstance(stmt.value, ast.Constant)
                    and isinstance(stmt.value.value, str)
                    and (i == 0 or isinstance(body[i - 1], (ast.Assign, ast.AnnAssign)))
                ):
                    out.add(id(stmt.value))
    return out


def _named(text: str) -> set[str]:
    words = {m.lower() for m in re.findall(r"[A-Za-z0-9_]+", text)}
    found = {n for n in BACKEND_NAMES if n in words}
    return found | {f"[backends.{n}]" for n in re.findall(r"backends\.(\w+)", text)}


def _allowed(module: str) -> set[str]:
    def within(key: str) -> bool:
        return module == key or (key.endswith(".*") and module.startswith(key[:-1]))

    return {w for keys, words, _ in NAMED_IN_THE_CORE if any(map(within, keys)) for w in words}


def test_the_core_names_no_backend() -> None:
    """Comments and docstrings may; code says nothing of a backend (it asks the backend)."""
    assert set(_declared_entry_points()) <= set(BACKEND_NAMES), "add the new backend here"
    found = []
    for name, path in _modules().items():
        if name.startswith("cfallow.backends"):
            continue
        tree = ast.parse(path.read_text())
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docs
            ):
                bad = _named(node.value) - _allowed(name)
                found += [f"{name}:{node.lineno}: {w} in {node.value!r}" for w in sorted(bad)]
    assert found == [], "\n".join(found)


def test_the_name_check_is_not_vacuous() -> None:
    assert _named('enable [backends.nftables] with mode = "sets"') == {
        "nftables",
        "[backends.nftables]",
    }
    assert _named("iptables-nft-save") == {"iptables"}
    assert _named("the AWS API") == {"aws"} and _named("aws_x") == set()
    tree = ast.parse('"""Doc: nginx."""\nX = 1\n"""About X: caddy."""\nY = "apache"\n')
    strings = [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value != 1]
    assert [n.value for n in strings if id(n) not in _docstrings(tree)] == ["apache"]


def test_no_formatter_escapes() -> None:
    """Code is as ruff formats it: no formatter escape (``fmt`` skip or off) packs lines."""
    marks = ("# fmt: " + "skip", "# fmt: " + "off")  # spelled apart: this file is scanned too
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for top in ("cfallow", "backends", "tests", "bench")
        for path in (ROOT / top).rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if any(m in line for m in marks)
    ]
    assert found == [], found
