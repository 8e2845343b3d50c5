"""janus_ft: fine-tune DeepSeek Janus / Janus-Pro with LoRA on understanding, text and generation.

The public API is imported lazily, so `import janus_ft` (and `janus-ft --help`) stays fast and
does not pull in torch/transformers until a function is used.
"""

from __future__ import annotations

import importlib

# public name -> module that defines it
_LAZY = {
    "sft": "janus_ft.api",
    "dpo": "janus_ft.api",
    "grpo": "janus_ft.api",
    "load_recipe": "janus_ft.recipe",
    "merge_adapter": "janus_ft.export.merge",
    "encode_images": "janus_ft.data.vq",
    "Janus": "janus_ft.infer.engine",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'janus_ft' has no attribute {name!r}")
