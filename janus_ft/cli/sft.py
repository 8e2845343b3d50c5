"""`janus-ft sft --recipe R.yaml [section.key=value ...]`: the main job (`janus_ft.train.sft`)."""

from __future__ import annotations

from .training import configure_training, run_training


def configure(parser) -> None:
    configure_training(parser, "recipes/", "train.max_steps=20 output_dir=runs/x")


def run(args) -> int:
    return run_training("sft", args)
