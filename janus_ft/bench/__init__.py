"""Benchmarks: `run` (variants side by side, each in its own process) and `throughput` (step timing,
FLOPs, peak memory)."""
