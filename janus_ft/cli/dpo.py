"""`janus-ft dpo --recipe R.yaml [section.key=value ...]`: preference tuning (`janus_ft.train.dpo`)."""

from __future__ import annotations

from .training import configure_training, run_training


def configure(parser) -> None:
    configure_training(parser, "recipes/dpo_*.yaml", "dpo.beta=0.2 train.max_steps=20 output_dir=runs/x")


def run(args) -> int:
    return run_training("dpo", args)
