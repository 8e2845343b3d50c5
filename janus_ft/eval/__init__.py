"""Evaluation: `metrics` (exact match, CER, NLL), `evaluate` (per-task loss and metrics of a base
model and an adapter, side by side), `rewards` (reward functions on TRL's call convention, and
`reward_model` for sequence-classification models), `sampler` (completions sampled and scored with
them, for GRPO and evaluation) and `reward_report` (`janus-ft eval --reward`)."""
