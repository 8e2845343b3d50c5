"""Data: from dataset records to model-ready batches, in pipeline order.

1. `records`      JSONL lines -> validated `Record`s (task inferred; file:line:field errors)
2. `images`       image files decoded once, checked, converted to RGB; images given as data stored as files
3. `sources`      any source a recipe names (JSONL, Parquet, Arrow, CSV, JSON, dataset directories, hub ids)
                  -> `Record`s, with column maps and `#N` sampling (source:row N:field errors)
4. `conversation` a `Record` -> the exact Janus prompt, split into supervised / unsupervised pieces
5. `tokens`       pieces -> `input_ids` and aligned `labels`, built together
6. `vq`           generation targets -> faithful VQ codes, cached on disk
7. `prepared`     sources -> validated, tokenized Arrow rows, built in parallel once, cached, memory-mapped
8. `dataset`      prepared rows (or records) -> lazy per-task datasets
9. `mixture`      per-task datasets -> one schedule holding the task ratios inside every step
10. `collate`      samples -> padded or packed batches

Beside the pipeline: `prompts` (GRPO prompts, janus_ft's or TRL's shapes), `preference` (DPO pairs),
`stream` (records read as training goes), `cache` (the cache root's entries listed and pruned).
"""
