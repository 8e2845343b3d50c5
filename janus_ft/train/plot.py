"""`loss.png`: total and per-task training (and validation) loss curves from the trainer's log."""

from __future__ import annotations

from pathlib import Path

SERIES = ("loss", "loss_understanding", "loss_text", "loss_generation",
          "eval_loss", "eval_loss_understanding", "eval_loss_text", "eval_loss_generation")


def loss_series(log_history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for entry in log_history:
        for key in SERIES:
            if key in entry and "step" in entry:
                out.setdefault(key, []).append((entry["step"], float(entry[key])))
    return out


def plot_losses(log_history: list[dict], path: str | Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = loss_series(log_history)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for key, points in series.items():
        steps, values = zip(*points)
        style = "--" if key.startswith("eval") else "-"
        ax.plot(steps, values, style, marker="o" if len(points) < 3 else None, label=key,
                linewidth=2.0 if key in ("loss", "eval_loss") else 1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy")
    ax.set_title("janus-ft training loss")
    if series:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
