#!/usr/bin/env python3
"""Mutation testing of cfallow's pure core: does a test notice each small wrong change?

For each module (guard, validate, trust, cadence, model) every mutant is one small
change made on the syntax tree: a comparison flipped at its boundary (``>`` to ``>=``,
``==`` to ``!=``), ``and``/``or`` swapped, a ``not`` dropped, a number moved by one
(``0.2`` to ``1.2``), ``True``/``False`` swapped, an arithmetic or set operator swapped,
a statement (a call, a ``raise``, an ``if``) removed. Each mutant is written into a
private copy of the source tree, which shadows the installed package through
``PYTHONPATH``, so the tests that run the CLI as a subprocess see the mutant too. Only
the test files that concern the module run (``-x``: the first failure kills it), each
mutant within a time limit (a mutant that hangs counts as killed, and is named).

    .venv/bin/python bench/mutate.py [--jobs 2] [--only guard,cadence] [--timeout 300]
    .venv/bin/python bench/mutate.py --pick cadence#12,model#40   # re-run some mutants

Prints every surviving mutant (module:line, what changed) and the score per module.
"""

from __future__ import annotations

import argparse
import ast
import copy
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

#: The pure core's modules and the tests that concern each (CLI subprocess tests included).
TESTS: dict[str, list[str]] = {
    "guard": ["tests/core/test_boundaries.py", "tests/core/test_growth_guard.py"],
    "validate": [
        "tests/core/test_boundaries.py",
        "tests/core/test_validate.py",
        "tests/core/test_hostile_source.py",
    ],
    "trust": ["tests/core/test_boundaries.py", "tests/core/test_trust.py"],
    "cadence": ["tests/core/test_boundaries.py", "tests/core/test_cadence.py"],
    "model": [
        "tests/core/test_boundaries.py",
        "tests/core/test_model.py",
        "tests/core/test_engine.py",
        "tests/core/test_fake_contract.py",
    ],
}

_FLIP = {
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
_BINOP = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult,
    ast.BitOr: ast.BitAnd,
    ast.BitAnd: ast.BitOr,
    ast.LShift: ast.RShift,
    ast.Mod: ast.Mult,
}


@dataclass(frozen=True)
class Mutant:
    module: str
    index: int  # the n-th mutation site in the module, in walk order
    line: int
    what: str


def _docstring(node: ast.AST, parent: ast.AST | None) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _annotations(tree: ast.Module) -> set[int]:
    """Nodes inside type annotations: never evaluated (``from __future__ import
    annotations``), so a mutant there is equivalent and not counted."""
    roots: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.annotation is not None:
            roots.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns:
            roots.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            roots.append(node.annotation)
    return {id(n) for root in roots for n in ast.walk(root)}


def _sites(tree: ast.Module) -> Iterator[tuple[ast.AST, str, str]]:
    """Every (node, kind, description) a mutant can change, in a fixed order."""
    skip = _annotations(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                if type(op) in _FLIP:
                    new = _FLIP[type(op)].__name__
                    yield node, f"cmp{i}", f"{type(op).__name__} -> {new}"
        elif isinstance(node, ast.BoolOp):
            yield node, "bool", "and <-> or"
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            yield node, "not", "drop not"
        elif isinstance(node, ast.BinOp) and type(node.op) in _BINOP:
            new = _BINOP[type(node.op)].__name__
            yield node, "binop", f"{type(node.op).__name__} -> {new}"
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
            if isinstance(node.value, bool):
                yield node, "const", f"{node.value} -> {not node.value}"
            else:
                yield node, "const", f"{node.value!r} -> {node.value + 1!r}"
        if isinstance(node, (ast.FunctionDef, ast.If, ast.For, ast.While, ast.With, ast.Try)):
            for field in ("body", "orelse", "finalbody"):
                for j, stmt in enumerate(getattr(node, field, []) or []):
                    if _docstring(stmt, node):
                        continue
                    if isinstance(stmt, (ast.Expr, ast.Raise, ast.If, ast.AugAssign)):
                        kind = type(stmt).__name__
                        yield node, f"del:{field}:{j}", f"remove the {kind} statement"


def _apply(tree: ast.Module, index: int) -> tuple[ast.Module, int, str]:
    """A copy of ``tree`` with the ``index``-th site mutated."""
    tree = copy.deepcopy(tree)
    for n, (node, kind, what) in enumerate(_sites(tree)):
        if n != index:
            continue
        line = getattr(node, "lineno", 0)
        if kind.startswith("cmp"):
            i = int(kind[3:])
            assert isinstance(node, ast.Compare)
            node.ops[i] = _FLIP[type(node.ops[i])]()
        elif kind == "bool":
            assert isinstance(node, ast.BoolOp)
            node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        elif kind == "not":
            assert isinstance(node, ast.UnaryOp)
            node.op = ast.UAdd()  # +x: the truth of x, not its negation
            node.operand = ast.Call(ast.Name("bool", ast.Load()), [node.operand], [])
        elif kind == "binop":
            assert isinstance(node, ast.BinOp)
            node.op = _BINOP[type(node.op)]()
        elif kind == "const":
            assert isinstance(node, ast.Constant)
            node.value = (not node.value) if isinstance(node.value, bool) else node.value + 1
        else:
            _, field, j = kind.split(":")
            body = getattr(node, field)
            line = body[int(j)].lineno
            body[int(j)] = ast.Pass()
        return ast.fix_missing_locations(tree), line, what
    raise IndexError(index)


def mutants(module: str) -> list[Mutant]:
    tree = ast.parse((ROOT / "cfallow" / f"{module}.py").read_text())
    out = []
    for n, (node, kind, what) in enumerate(_sites(tree)):
        line = getattr(node, "lineno", 0)
        if kind.startswith("del:"):
            _, field, j = kind.split(":")
            line = getattr(node, field)[int(j)].lineno
        out.append(Mutant(module, n, line, what))
    return out


def _tree_copy(dest: Path) -> None:
    """The source tree without the virtualenv, caches and git (shadows the editable install)."""
    ignore = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", ".*_cache")
    for name in ("cfallow", "tests"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")


def _run_tests(work: Path, module: str, timeout: float) -> str:
    env = {**os.environ, "PYTHONPATH": str(work), "PYTHONDONTWRITEBYTECODE": "1"}
    argv = [PY, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    try:
        done = subprocess.run(
            [*argv, *TESTS[module]],
            cwd=work,
            env=env,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "timeout"
    return "survived" if done.returncode == 0 else "killed"


def _worker_dirs(jobs: int, top: Path) -> list[Path]:
    dirs = []
    for j in range(jobs):
        d = top / f"w{j}"
        d.mkdir()
        _tree_copy(d)
        dirs.append(d)
    return dirs


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up the temp tree
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", default=",".join(TESTS))
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument(
        "--pick",
        default="",
        help="only these mutants, as MODULE#INDEX,... (the index each result line shows)",
    )
    args = ap.parse_args()
    modules = [m for m in args.only.split(",") if m]
    todo = [m for mod in modules for m in mutants(mod)]
    if args.pick:
        picked = set(args.pick.split(","))
        todo = [m for m in todo if f"{m.module}#{m.index}" in picked]
        modules = sorted({m.module for m in todo}, key=list(TESTS).index)
    start = time.monotonic()
    results: dict[Mutant, str] = {}
    with tempfile.TemporaryDirectory(prefix="cfallow-mutate-") as top:
        dirs = _worker_dirs(args.jobs, Path(top))
        for d in dirs:  # the unmutated tree must pass, or nothing below means anything
            for mod in modules:
                if _run_tests(d, mod, args.timeout) != "survived":
                    print(f"baseline fails for {mod}: fix the tests first", file=sys.stderr)
                    return 2
            break
        free = list(dirs)

        def one(m: Mutant) -> None:
            work = free.pop()
            target = work / "cfallow" / f"{m.module}.py"
            original = target.read_text()
            try:
                tree, _, _ = _apply(ast.parse(original), m.index)
                target.write_text(ast.unparse(tree) + "\n")
                results[m] = _run_tests(work, m.module, args.timeout)
            finally:
                target.write_text(original)
                free.append(work)
            print(f"{m.module}#{m.index} {m.module}:{m.line} {m.what}: {results[m]}", flush=True)

        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(one, todo))
    wall = time.monotonic() - start
    print()
    print("module     mutants  killed  timeout  survived  score")
    for mod in modules:
        mine = [r for m, r in results.items() if m.module == mod]
        killed = sum(r != "survived" for r in mine)
        print(
            f"{mod:<10} {len(mine):>7} {mine.count('killed'):>7} {mine.count('timeout'):>8} "
            f"{mine.count('survived'):>9}  {100 * killed / max(len(mine), 1):.1f} %"
        )
    print("survivors:")
    for m, r in sorted(results.items(), key=lambda kv: (kv[0].module, kv[0].line)):
        if r == "survived":
            print(f"  cfallow/{m.module}.py:{m.line}: {m.what} ({m.module}#{m.index})")
    print(f"wall time: {wall:.0f} s with --jobs {args.jobs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
