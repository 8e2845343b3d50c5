"""The console of janus-ft: the short list of third-party warnings it hides. (This module imports
no ML library, so `cli` can hide import-time warnings before the libraries that raise them load.)

A warning that janus_ft's own calls would cause is fixed at the call, never hidden here. What is
hidden is a warning raised inside a library whatever its caller passes, which the user can do
nothing about: each entry of `QUIET` names the exact message (its start), the category or logger,
and why. Everything else is still shown.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from dataclasses import dataclass


@dataclass(frozen=True)
class Quiet:
    message: str                            # the start of the exact message
    reason: str
    category: type[Warning] | None = None   # a `warnings.warn` of this category...
    logger: str | None = None               # ...or a record logged by this logger


QUIET = (
    Quiet("`is_gradient_checkpointing` is deprecated", category=FutureWarning,
          reason="PEFT's PeftModel reads transformers' deprecated alias whenever it wraps a model "
                 "(get_peft_model); janus_ft's own code uses `is_activation_checkpointing`"),
    Quiet("Passing `generation_config` together with generation-related arguments=({'guidance_scale'})",
          logger="transformers.generation.utils",
          reason="transformers' Janus `generate` in text mode passes `guidance_scale=None` next to the "
                 "generation config it built itself, whatever the caller passes"),
    Quiet("Setting accelerator to CPU.", logger="DeepSpeed",
          reason="DeepSpeed, when installed, says so on import on every machine without a GPU, "
                 "also in runs that do not use it"),
    Quiet("Failed to load CPU gemm_4bit_forward from kernels-community", logger="bitsandbytes.backends.cpu.ops",
          reason="bitsandbytes, when installed, logs it on import on CPUs with AVX512-BF16, also in runs "
                 "that quantize nothing; 4-bit on CPU then uses bitsandbytes' own (slower) kernel"),
)


class _Drop(logging.Filter):
    def __init__(self, quiet: Quiet):
        super().__init__()
        self.quiet = quiet

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.quiet.message)


@contextlib.contextmanager
def quiet_third_party(entries: tuple[Quiet, ...] = QUIET):
    """Hide exactly the `entries` while the block runs (warning filters and logger filters are
    restored afterwards, so a program calling janus_ft in-process keeps its own settings)."""
    drops = [(logging.getLogger(q.logger), _Drop(q)) for q in entries if q.logger]
    with warnings.catch_warnings():
        for q in entries:
            if q.category is not None:
                warnings.filterwarnings("ignore", message=re.escape(q.message), category=q.category)
        for logger, drop in drops:
            logger.addFilter(drop)
        try:
            yield
        finally:
            for logger, drop in drops:
                logger.removeFilter(drop)
