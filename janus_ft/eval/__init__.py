"""Evaluation: `metrics` (exact match, CER, NLL) and `evaluate` (per-task loss and metrics of a base
model and an adapter, side by side)."""
