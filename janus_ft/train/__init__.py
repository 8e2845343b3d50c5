"""Training: `sft` (the main job, top to bottom) on `trainer` (TRL's SFTTrainer with the Janus loss),
with `checkpoint` (atomic saves, signals, output_dir safety), `distributed` (process setup),
`probe` (answers and images at each evaluation), `plot` and `upstream` (the private upstream APIs
janus_ft relies on, in one place)."""
