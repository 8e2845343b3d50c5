"""What keeps the code honest about itself: every `janus_ft.x.y` a docstring, comment or doc names
exists; every repository path a doc or comment names exists; library errors name parameters and
recipe keys, never command-line flags (the CLI maps parameters to its flags, `cli.with_flags`)."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from janus_ft.cli import build_parser, with_flags

REPO = Path(__file__).resolve().parent.parent
TEXTS = [*sorted((REPO / "janus_ft").rglob("*.py")), *sorted((REPO / "docs").glob("*.md")), REPO / "README.md",
         *sorted((REPO / "recipes").rglob("*.yaml")), *sorted((REPO / "scripts").glob("*.py"))]
# Entry points may name their own flags; everything else is library code.
FRONT_ENDS = ("janus_ft/cli/", "janus_ft/bench/", "janus_ft/ui/")


def resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for attr in parts[k:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_every_janus_ft_name_in_code_and_docs_exists():
    missing = [f"{path.relative_to(REPO)}:{i}: {name}" for path in TEXTS
               for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
               for name in re.findall(r"janus_ft(?:\.[A-Za-z_]\w*)+", line) if not resolves(name)]
    assert missing == []


def test_every_repository_path_in_code_and_docs_exists():
    roots = ("janus_ft/", "tests/", "docs/", "recipes/", "scripts/", "data_templates/")
    subpackages = tuple(f"{p.name}/" for p in (REPO / "janus_ft").iterdir() if p.is_dir() and p.name != "__pycache__")
    missing = []
    for path in TEXTS:
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for ref in re.findall(r"(?<![\w/.-])((?:[\w-]+/)+[\w-]+\.(?:py|md|yaml|json))\b", line):
                if ref.startswith(roots) and not (REPO / ref).exists():
                    missing.append(f"{path.relative_to(REPO)}:{i}: {ref}")
                elif ref.startswith(subpackages) and ref.endswith(".py") and not (REPO / "janus_ft" / ref).exists():
                    missing.append(f"{path.relative_to(REPO)}:{i}: {ref}")
    assert missing == []


def raised_messages(path: Path) -> list[tuple[int, str]]:
    """(line, text) of the string literals inside every `raise` of a module."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Raise) and node.exc is not None:
            for sub in ast.walk(node.exc):
                if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                    out.append((node.lineno, sub.value))
    return out


def test_library_errors_name_parameters_not_flags():
    flagged = [f"{path.relative_to(REPO)}:{line}: {text}" for path in sorted((REPO / "janus_ft").rglob("*.py"))
               if not str(path.relative_to(REPO)).startswith(FRONT_ENDS)
               for line, text in raised_messages(path) if re.search(r"(?<![\w-])--[a-z]", text)]
    assert flagged == []


@pytest.mark.parametrize("command, message, shown", [
    ("merge", "output=runs/m is not empty; pass overwrite=True to replace it",
     "--output runs/m is not empty; pass --overwrite to replace it"),
    ("chat", "adapter=runs/x: no adapter_config.json there", "--adapter runs/x: no adapter_config.json there"),
    ("convert", "output= must differ from input=", "--output must differ from --input"),
    ("convert", "used the Janus-Pro chat format; pass fmt=janus for Janus-1.3B",
     "used the Janus-Pro chat format; pass --format janus for Janus-1.3B"),
    ("chat", "train.max_steps=3 and data.mix=... are recipe keys", "train.max_steps=3 and data.mix=... are recipe keys"),
])
def test_the_command_line_names_its_flags_for_the_parameters(command, message, shown):
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    assert with_flags(message, sub) == shown
