"""Evaluation: `metrics` (exact match, CER, NLL), `evaluate` (per-task loss and metrics of a base
model and an adapter, side by side), `rewards` (reward functions on TRL's call convention: loading
and scoring; the built-ins in `reward_functions`, sequence-classification models in
`reward_model`), `sampler` (completions sampled and scored with them, for GRPO and evaluation) and
`reward_report` (`janus-ft eval --reward`)."""
