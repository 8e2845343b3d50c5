"""The recipe's sections as typed dataclasses; every field carries a one-line help (`opt`).

`Recipe` holds the sections every method reads (and is `janus-ft sft`'s recipe: SFT adds no
section of its own). A method with options of its own subclasses it with one more section, in its
own module here (`recipe.dpo.DpoRecipe`, `recipe.grpo.GrpoRecipe`), and says in `recipe.methods`
which shared keys it does not read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..janus import COMPONENTS


def opt(default, help_text: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help_text}, **kw)
    return field(default=default, metadata={"help": help_text}, **kw)


@dataclass
class ModelArgs:
    path: str = opt("tiny", "transformers-native Janus directory or hub id; 'tiny' = the embedded tiny model")
    format: str = opt("auto", "conversation format: janus-pro | janus | auto (from the chat template)")
    dtype: str = opt("float32", "weights dtype: float32 | bfloat16 | float16")
    quantization: str = opt("none", "none | 4bit | 8bit (bitsandbytes, language model only)")
    attn_implementation: str | None = opt(None, "sdpa | eager | flash_attention_2 (default: transformers' choice)")
    head_chunk_size: int = opt(1024, "targets the text and generation heads score at a time (logits, log-softmax and "
                                     "gradient per chunk); 0 = all in one piece")
    compile: bool = opt(False, "torch.compile each language-model decoder layer (regional compilation, LoRA "
                               "inside; sequence length dynamic, so packing and mixed lengths do not recompile)")


# What `columns` may map a source's columns onto (the JSONL record fields, docs/data.md).
RECORD_FIELDS = ("query", "response", "images", "history", "system", "messages", "task",
                 # edits: the source image(s) and the target image (the instruction is the query)
                 "source_images", "target_image",
                 # preference pairs (janus-ft dpo)
                 "prompt", "chosen", "rejected", "rejected_response", "rejected_images",
                 # GRPO prompts: the answer verifiable rewards compare with (other columns pass as they are)
                 "solution")


@dataclass
class DataSource:
    path: str = opt("", "a JSONL, Parquet, Arrow, CSV or JSON file, an imagefolder or saved-dataset directory, "
                       "or a hub dataset id; PATH#N samples N records (ms-swift's syntax, see sample)")
    split: str | None = opt(None, "split of a `datasets` source (default: its only split)")
    name: str | None = opt(None, "configuration (subset) of a hub dataset")
    columns: dict = opt({}, f"record field -> the source's column, fields: {', '.join(RECORD_FIELDS)}")
    query: str | None = opt(None, "the query of every record, for sources that hold only (image, text)")
    response: str | None = opt(None, "the response of every record: '<image>' for text-to-image sources of "
                                    "(image, caption) rows")
    max_samples: int | None = opt(None, "use the first N records of the source")
    sample: int | None = opt(None, "use N records drawn at random with train.seed, repeating the source when N "
                                  "exceeds it (what PATH#N sets)")

    @property
    def label(self) -> str:
        """How errors and logs name the source: its path, and the split when one was chosen."""
        return f"{self.path}[{self.split}]" if self.split else self.path


@dataclass
class DataArgs:
    train: list = opt([], "training sources: list of {path: FILE.jsonl}")
    val: list = opt([], "validation sources, same shape as train")
    mix: dict = opt({}, "samples of each task per optimizer step, as ratios (Janus-Pro stage 3: 5:1:4); "
                       "empty: the tasks present, in proportion to their sizes")
    max_length: int = opt(2048, "longest sample in tokens after image expansion; longer ones are dropped")
    cfg_dropout: float = opt(0.1, "probability of blanking a generation caption (classifier-free guidance)")
    edit_source_codes: bool = opt(False, "edit sources also enter as VQ codes through the generation path "
                                         "(as Janus-4o), besides SigLIP features")
    edit_source_code_dropout: float = opt(0.5, "with edit_source_codes: probability of leaving an edit sample's "
                                               "source codes out")
    edit_cfg_dropout: float = opt(0.1, "probability of blanking an edit instruction, sources kept (guidance "
                                       "branch 'sources')")
    edit_uncond_dropout: float = opt(0.05, "probability of blanking an edit instruction and its sources (guidance "
                                           "branch 'none')")
    system_prompt: str | None = opt(None, "system prompt for records without one (default: Janus's own)")
    last_turn_only: bool = opt(False, "supervise only the last assistant turn of multi-turn records")
    packing: bool = opt(False, "pack samples into padding-free rows (position ids restart per sample)")
    packed_attention: str = opt("auto", "with packing: per_sample (each sample of a row attends over itself, no mask; "
                                        "flash-attention / torch varlen kernels on a GPU) | mask (SDPA with a "
                                        "block-diagonal mask over the row) | auto (= per_sample)")
    group_by_length: bool = opt(False, "without packing: order each step's samples by length so micro-batches pad less")
    pad_to_multiple_of: int | None = opt(None, "without packing: pad each micro-batch to a multiple of N tokens "
                                               "(steadier shapes for compiled kernels)")
    code_cache: str | None = opt(None, "directory of the VQ code cache (default: $JANUS_FT_CACHE/vq_codes)")
    num_proc: int | None = opt(None, "processes validating and tokenizing records into the prepared-data cache "
                                     "(default: one per CPU core)")
    streaming: bool = opt(False, "read, check and tokenize data.train records as training consumes them (no cache; "
                                 "needs data.mix and train.max_steps)")
    max_bad_records: int = opt(100, "with streaming: bad records skipped before the run stops")


@dataclass
class LoraArgs:
    r: int = opt(16, "LoRA rank")
    alpha: int = opt(32, "LoRA alpha (scaling = alpha / r)")
    dropout: float = opt(0.05, "dropout on the LoRA input")
    targets: list = opt(["llm", "aligner"], f"components that get LoRA: any of {', '.join(COMPONENTS)}")
    modules_to_save: list = opt([], "components trained fully instead of with LoRA (same names)")
    extra: dict = opt({}, "other peft.LoraConfig arguments, passed through (e.g. use_rslora, use_dora)")


@dataclass
class TrainArgs:
    max_steps: int = opt(-1, "optimizer steps; -1 = derive from num_train_epochs")
    num_train_epochs: float = opt(1, "passes over the training data (when max_steps is -1)")
    learning_rate: float = opt(2.0e-4, "peak learning rate")
    per_device_train_batch_size: int = opt(2, "samples per device per micro-batch")
    per_device_eval_batch_size: int = opt(4, "samples per device per evaluation batch")
    gradient_accumulation_steps: int = opt(1, "micro-batches per optimizer step")
    seed: int = opt(42, "seed for initialisation, data order, mixing and CFG dropout")
    lr_scheduler_type: str = opt("cosine", "transformers scheduler name (Janus-Pro stage 3: constant)")
    warmup_steps: float = opt(0, "linear warm-up: steps, or a fraction of all steps when below 1 (transformers 5's "
                                 "spelling of warmup_ratio)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    max_grad_norm: float = opt(1.0, "gradient clipping norm")
    logging_steps: float = opt(1, "log every N optimizer steps (below 1: a fraction of all steps)")
    save_steps: float = opt(500, "checkpoint every N optimizer steps (below 1: a fraction of all steps)")
    save_total_limit: int | None = opt(None, "keep at most N checkpoints")
    save_last: bool = opt(False, "also checkpoint the last step when save_steps does not divide it (the final "
                                "adapter is always written)")
    eval_steps: float | None = opt(None, "evaluate on data.val every N steps (below 1: a fraction of all steps; "
                                         "None: only at the end)")
    eval_on_start: bool = opt(False, "with eval_steps, also evaluate before step 1: curves and grids start at the base model")
    eval_answers: int = opt(8, "understanding/text val records answered at each evaluation (exact match, CER); 0: loss only")
    eval_images: int = opt(4, "generation val captions drawn at each evaluation (output_dir/samples, TensorBoard); 0: none")
    sample_prompts: list = opt([], "captions to draw at each evaluation instead of the first val captions")
    gradient_checkpointing: bool = opt(False, "recompute activations in backward to save memory")
    report_to: list = opt([], "loggers, e.g. [tensorboard]")
    resume: bool = opt(False, "continue from the newest checkpoint in output_dir")
    resume_from_checkpoint: str | None = opt(None, "continue from this checkpoint directory")
    overwrite_output_dir: bool = opt(False, "replace what a non-empty output_dir holds (default: refuse)")
    nan_policy: str = opt("stop", "on a non-finite loss: stop (naming step and task) | skip (the micro-batch, counted)")
    deepspeed: str | None = opt(None, "DeepSpeed config file (see recipes/deepspeed/)")
    dataloader_num_workers: int | None = opt(None, "worker processes building samples (images decoded, "
                                                   "preprocessed) ahead of the step; default: 4 per process "
                                                   "with a GPU, none on CPU (measured: docs/benchmarks.md)")
    disable_tqdm: bool = opt(False, "hide the progress bar")
    extra: dict = opt({}, "other transformers TrainingArguments fields, passed through (also accepted directly under "
                          "train)")


@dataclass
class Recipe:
    """The sections every method reads; as it is, the recipe of `janus-ft sft`."""

    model: ModelArgs = field(default_factory=ModelArgs)
    data: DataArgs = field(default_factory=DataArgs)
    lora: LoraArgs = field(default_factory=LoraArgs)
    train: TrainArgs = field(default_factory=TrainArgs)
    output_dir: str = opt("runs/janus-ft", "where the adapter, checkpoints and logs of the run go")
    source: str | None = field(default=None, metadata={"internal": True})   # the recipe file, if any

    method: ClassVar[str] = "sft"


