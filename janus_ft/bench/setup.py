"""What the variants of `janus-ft bench` share and how each is made: the datasets and the first
loaded model (`Setup`), and a variant's model with LoRA, schedule, collator and training arguments
(`prepare`), with what training applies after LoRA (`apply_levers`). Random models of real sizes
are written by `random_model`."""

from __future__ import annotations

import gc

import torch

BASELINE = "janus-ft"   # the recipe as it is: the variant every other one is compared with


def compute_dtype(recipe) -> torch.dtype:
    """The dtype matmuls run in: the weights' (bf16 on a GPU also under autocast; 4-bit weights are
    dequantized to it)."""
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(recipe.model.dtype, torch.float32)


class Setup:
    """What every variant shares: validated records and per-task datasets (VQ codes cached), built
    with the first loaded model, which the first variant then trains."""

    def __init__(self, recipe):
        from ..data.conversation import resolve_format
        from ..data.dataset import build_datasets, require_tasks
        from ..model.loading import load_model_and_processor, load_processor
        from ..train.sft import read_data

        processor = load_processor(recipe.model.path)
        fmt = resolve_format(processor, recipe.model.format)
        records, _ = read_data(recipe, processor, fmt)
        self.model, self.processor = load_model_and_processor(recipe.model)
        if torch.cuda.is_available() and not getattr(self.model, "hf_device_map", None):
            self.model.to("cuda")   # VQ-encode the generation targets on the GPU, not the CPU
        self.train_sets = build_datasets(records, self.model, self.processor, recipe, fmt)
        require_tasks(self.train_sets, recipe.data.mix)

    def take_model(self, recipe):
        from ..model.loading import load_model_and_processor

        model, self.model = self.model, None
        return model if model is not None else load_model_and_processor(recipe.model)[0]


def prepare(recipe, setup: Setup, n_steps: int, levers: bool = True):
    """A model with LoRA (the same initialisation every time; with `levers`, also the recipe's
    attention for packed rows and compiled layers), the mixture, collator, training arguments and a
    step timer: what either loop needs."""
    from ..model.lora import apply_lora
    from .throughput import FlopModel, StepTimer

    recipe.train.extra = {**recipe.train.extra, "save_strategy": "no"}
    model = setup.take_model(recipe)
    torch.manual_seed(recipe.train.seed)
    model = apply_lora(model, recipe.lora)
    recipe.train.max_steps = n_steps
    mixture, collator, args = schedule(recipe, setup, model, n_steps)
    if levers:
        from ..train.run import apply_levers
        apply_levers(model, recipe)
    return model, mixture, collator, args, StepTimer(FlopModel.of(model), args.device)


def schedule(recipe, setup: Setup, model, n_steps: int):
    """The mixture (the same samples in the same order for every variant of a seed), the collator
    and the training arguments of `recipe`."""
    from ..data.collate import JanusCollator
    from ..train.arguments import training_arguments
    from ..train.sft import training_schedule

    mixture, _ = training_schedule(recipe, setup.train_sets)
    collator = JanusCollator(setup.processor.tokenizer.pad_token_id, packing=recipe.data.packing,
                             pad_to_multiple_of=recipe.data.pad_to_multiple_of,
                             image_token_id=model.config.image_token_id)
    return mixture, collator, training_arguments(recipe, n_steps, has_eval=False)


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
