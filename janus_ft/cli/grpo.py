"""`janus-ft grpo --recipe R.yaml [section.key=value ...]`: GRPO with LoRA and Python reward
functions (`janus_ft.train.grpo`)."""

from __future__ import annotations

from .training import configure_training, run_training


def configure(parser) -> None:
    configure_training(parser, "recipes/grpo_*.yaml", "grpo.num_generations=4 train.max_steps=20")


def run(args) -> int:
    return run_training("grpo", args)
