"""The package's layering, checked on its source: every import (also those inside functions) names
something that exists, no module imports one above its layer, nothing imports the command line,
the library builds the tiny model only where a model path is resolved, and no import cycle exists.

Layers, lowest first: facts and config (janus, errors, files, recipe) < data < model < infer <
eval, export < train < bench, ui < cli, api. The tiny-model builder sits with the model layer: the loader
builds it for `tiny`; the command line and benchmarks build sized variants.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "janus_ft"
LAYERS = {
    "janus_ft.janus": 0, "janus_ft.errors": 0, "janus_ft.files": 0, "janus_ft.recipe": 0,
    "janus_ft.data": 1, "janus_ft.model": 2, "janus_ft.infer": 3, "janus_ft.eval": 4, "janus_ft.export": 4,
    "janus_ft.train": 5, "janus_ft.bench": 6, "janus_ft.tiny": 2, "janus_ft.ui": 6, "janus_ft.cli": 7,
    "janus_ft.api": 7,
}
# `model.path: tiny` / `Janus.load("tiny")` build the tiny model where it is resolved; nothing else in
# the library builds one.
TINY_USERS = ("janus_ft.cli", "janus_ft.bench", "janus_ft.model.loading")


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = PACKAGE) -> list[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) for every janus_ft import in a file, nested ones too."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "janus_ft":
                found.append((target, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "janus_ft"]
    return found


def graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> janus_ft modules it imports (a name imported from a package that is a submodule
    counts as that submodule)."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for target, names, _ in imports(path, root):
            subs = {f"{target}.{n}" for n in names if f"{target}.{n}" in modules}
            edges[mod] |= subs or {target}
            if subs and len(subs) < len(names):
                edges[mod].add(target)
    return edges


def layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    assert best is not None, f"{module} has no layer: add its package to LAYERS"
    return LAYERS[best]


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt == node or nxt not in edges:
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def layering_problems(root: Path = PACKAGE) -> list[str]:
    problems = []
    for mod, targets in graph(root).items():
        for target in targets:
            if target == mod:
                continue
            if target.startswith("janus_ft.cli") and not mod.startswith("janus_ft.cli"):
                problems.append(f"{mod} imports the command line ({target})")
            elif target == "janus_ft.tiny" and not mod.startswith(TINY_USERS):
                problems.append(f"{mod} imports the tiny-model builder")
            elif target != "janus_ft" and layer(target) > layer(mod):
                problems.append(f"{mod} (layer {layer(mod)}) imports {target} (layer {layer(target)})")
    cycle = find_cycle(graph(root))
    if cycle:
        problems.append("import cycle: " + " -> ".join(cycle))
    return problems


def test_every_import_names_something_that_exists():
    """Imports inside functions run only when that path runs: check them all here."""
    missing = []
    for path in PACKAGE.rglob("*.py"):
        for target, names, line in imports(path):
            try:
                module = importlib.import_module(target)
            except ImportError as err:
                missing.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {target}: {err}")
                continue
            for name in names:
                if not hasattr(module, name):
                    try:
                        importlib.import_module(f"{target}.{name}")
                    except ModuleNotFoundError:
                        missing.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {target}.{name}")
    assert not missing, "\n".join(missing)


def test_layers_hold_and_no_cycles():
    assert layering_problems() == []


def test_the_check_catches_a_cycle_and_an_upward_import(tmp_path):
    """The checker itself fails on a deliberately introduced cycle and on an upward import."""
    import shutil

    root = tmp_path / "janus_ft"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "data" / "records.py").write_text((root / "data" / "records.py").read_text()
                                              + "\n\ndef _cycle():\n    from .dataset import JanusDataset\n")
    (root / "model" / "loss.py").write_text((root / "model" / "loss.py").read_text()
                                            + "\n\ndef _up():\n    from ..train.sft import run_sft\n")
    problems = layering_problems(root)
    assert "janus_ft.model.loss (layer 2) imports janus_ft.train.sft (layer 5)" in problems
    cycle = [p for p in problems if p.startswith("import cycle")]
    assert cycle and "janus_ft.data.records" in cycle[0] and "janus_ft.data.dataset" in cycle[0]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small(path):
    """Modules up to ~400 lines (the style guide's budget), so each reads as one stage."""
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 420


def test_ruff_is_clean():
    """The style rules in pyproject.toml hold for the package, the tests and the scripts."""
    import subprocess
    import sys

    root = PACKAGE.parent
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "janus_ft", "tests", "data_templates",
                          "scripts", "docs"], cwd=root, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
