"""What the Runs tab shows of a training output directory (what `janus-ft sft` writes there):
loss curves from `trainer_state.json`, evaluation metrics logged during training (and the report of
`janus-ft eval` in `eval/eval.json` when there is one), the sample grids `samples/step-N.png`, the
mixture actually consumed (`mixture.json`) and the recipe (`recipe.yaml`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..train.plot import plot_losses

STATE = "trainer_state.json"
_STEP = re.compile(r"step-(\d+)\.png$")
# Logged at evaluation but not metrics of the model.
_NOT_METRICS = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")


def find_runs(root: str | Path | None) -> list[Path]:
    """Run directories: `root` itself when it is one, else its sub-directories (two levels) that
    hold a trainer_state.json, sorted by name."""
    if root is None:
        return []
    root = Path(root)
    if (root / STATE).is_file():
        return [root]
    found = {p.parent for pattern in (f"*/{STATE}", f"*/*/{STATE}") for p in root.glob(pattern)}
    return sorted(p for p in found if not p.name.startswith("checkpoint-"))


@dataclass
class RunView:
    path: Path
    log_history: list[dict]
    metrics: list[dict]                   # one row per evaluated step: {"step": n, name: value, ...}
    samples: list[tuple[Path, int]]       # (grid, step), by step
    mixture: dict | None
    recipe: str
    eval_report: dict | None = field(default=None)


def read_run(path: str | Path) -> RunView:
    path = Path(str(path).strip())
    state_file = path / STATE
    if not state_file.is_file():
        raise UserError(f"run {path}: no {STATE} there (not an output directory of janus-ft sft, "
                        "or the run has not saved yet)")
    try:
        log_history = json.loads(state_file.read_text(encoding="utf-8")).get("log_history", [])
    except (json.JSONDecodeError, AttributeError) as err:
        raise UserError(f"{state_file}: not a trainer state ({err})") from None
    samples = sorted(((p, int(_STEP.search(p.name).group(1))) for p in (path / "samples").glob("step-*.png")
                      if _STEP.search(p.name)), key=lambda item: item[1])
    return RunView(path=path, log_history=log_history, metrics=eval_metrics(log_history), samples=samples,
                   mixture=_json(path / "mixture.json"), recipe=_text(path / "recipe.yaml"),
                   eval_report=_json(path / "eval" / "eval.json"))


def eval_metrics(log_history: list[dict]) -> list[dict]:
    """Every evaluation logged during training: step and each `eval_*` value (losses and metrics)."""
    rows = []
    for entry in log_history:
        values = {k.removeprefix("eval_"): round(float(v), 4) for k, v in entry.items()
                  if k.startswith("eval_") and k not in _NOT_METRICS and isinstance(v, (int, float))}
        if values:
            rows.append({"step": entry.get("step"), **values})
    return rows


def metrics_table(rows: list[dict]) -> tuple[list[str], list[list]]:
    """(headers, rows) with one column per metric any evaluation logged, blank where it did not."""
    headers = ["step"] + sorted({k for row in rows for k in row if k != "step"})
    return headers, [[row.get(h, "") for h in headers] for row in rows]


def loss_plot(view: RunView, out_dir: Path) -> Path | None:
    """loss.png of the run's log (total and per-task, train and validation), redrawn from the
    trainer state so a run still training shows its latest steps."""
    if not any("loss" in e or "eval_loss" in e for e in view.log_history):
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(view.path.resolve()).strip("/")) or "run"
    return plot_losses(view.log_history, out_dir / f"{name}-loss.png")


def _json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not JSON ({err})") from None


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.is_file() else ""
