"""Every example of docs/python.md runs: its Python blocks in order, in one namespace (a block whose
first line is `# NAME.py` is that file, written instead of run), and each `janus-ft ...` line of its
bash blocks through the command line, from a directory holding the repository's `recipes/` and
`data_templates/` and two LoRA adapters in `runs/`."""

import re
import shlex
import sys
from pathlib import Path

from conftest import random_adapter

from janus_ft.cli import main

REPO = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"```(python|bash)\n(.*?)```", re.DOTALL)


def blocks(path: Path) -> list[tuple[str, str]]:
    return BLOCK.findall(path.read_text())


def test_the_examples_are_there():
    found = blocks(REPO / "docs/python.md")
    assert sum(kind == "python" for kind, _ in found) >= 6 and any(kind == "bash" for kind, _ in found)


def test_every_example_runs(tiny_dir, tmp_path, monkeypatch):
    for name in ("recipes", "data_templates"):
        (tmp_path / name).symlink_to(REPO / name)
    random_adapter(tiny_dir, ["llm", "aligner"], tmp_path / "runs/demo", seed=1)
    random_adapter(tiny_dir, ["llm", "aligner"], tmp_path / "runs/other", seed=2)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace: dict = {}
    for kind, code in blocks(REPO / "docs/python.md"):
        first = code.splitlines()[0]
        if kind == "python" and re.fullmatch(r"# [\w./]+\.py", first):
            (tmp_path / first[2:]).write_text(code)
        elif kind == "python":
            exec(compile(code, "docs/python.md", "exec"), namespace)
        else:
            for line in code.splitlines():
                if line.startswith("janus-ft "):
                    assert main(shlex.split(line)[1:]) == 0, line
    sys.modules.pop("my_rewards", None)
    assert (tmp_path / "runs/grpo-python/eval/eval.json").is_file()
