"""Data: from dataset records to model-ready batches, in pipeline order.

1. `records`      JSONL lines -> validated `Record`s (task inferred; file:line:field errors)
2. `images`       image files decoded once, checked, converted to RGB
3. `conversation` a `Record` -> the exact Janus prompt, split into supervised / unsupervised pieces
4. `tokens`       pieces -> `input_ids` and aligned `labels`, built together
5. `vq`           generation targets -> faithful VQ codes, cached on disk
6. `dataset`      records -> lazy per-task datasets (and the sources a recipe names)
7. `mixture`      per-task datasets -> one schedule holding the task ratios inside every step
8. `collate`      samples -> padded or packed batches
"""
