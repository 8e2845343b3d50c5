"""The plots of a run: `loss.png` (total and per-task training and validation loss) and, for GRPO,
`reward.png` (mean reward of the sampled batches and of the held-out prompts), from the log."""

from __future__ import annotations

from pathlib import Path

from ..janus import TASKS

SERIES = ("loss", *(f"loss_{t}" for t in TASKS), "eval_loss", *(f"eval_loss_{t}" for t in TASKS))
# One colour per task, train solid and validation dashed: the two curves of a task read as a pair.
COLOURS = {"loss": "black", "understanding": "tab:blue", "text": "tab:green", "generation": "tab:red",
           "edit": "tab:purple"}


def loss_series(log_history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for entry in log_history:
        for key in SERIES:
            if key in entry and "step" in entry:
                out.setdefault(key, []).append((entry["step"], float(entry[key])))
    return out


def _style(key: str) -> dict:
    evaluation = key.startswith("eval_")
    task = key.removeprefix("eval_").removeprefix("loss_")
    name = "all tasks" if task == "loss" else task
    return {"color": COLOURS.get(task, "gray"), "linestyle": "--" if evaluation else "-",
            "marker": "o" if evaluation else None, "markersize": 4,
            "linewidth": 1.2 if task == "loss" else 1.8, "label": f"{name} ({'val' if evaluation else 'train'})"}


def plot_losses(log_history: list[dict], path: str | Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = loss_series(log_history)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    # legend in task order, each task's training curve next to its validation curve
    order = {key.removeprefix("eval_"): i for i, key in enumerate(SERIES)}
    for key in sorted(series, key=lambda k: (order[k.removeprefix("eval_")], k.startswith("eval_"))):
        steps, values = zip(*series[key])
        ax.plot(steps, values, **_style(key))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy per supervised token")
    ax.set_title("janus-ft loss per task (solid: training batches, dashed: validation set)", fontsize=10)
    if series:
        ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_rewards(log_history: list[dict], path: str | Path) -> Path:
    """`reward.png`: the mean reward of the sampled batches and of the held-out prompts, per step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for key, style in (("reward", {"color": "black", "label": "training batches"}),
                       ("eval_reward", {"color": "tab:red", "linestyle": "--", "marker": "o", "label": "held-out prompts"})):
        points = [(e["step"], e[key]) for e in log_history if key in e and "step" in e]
        if points:
            ax.plot(*zip(*points), **style)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("reward (weighted sum of the reward functions)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
