"""Loading: a transformers-native Janus and its processor, for training (optionally quantized)
or for inference (optionally with a LoRA adapter, loaded exactly as plain PEFT loads it).

`model.path: tiny` names the embedded tiny model, built into the cache (`janus_ft.files.tiny_model_dir`)
the first time anything loads it, from Python or the command line.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import RecipeError, UserError
from ..janus import COMPONENT_PATHS, DTYPES, VQ_PATH

# Files a processor directory has (transformers 5 keeps the image processor in processor_config.json).
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def resolve_model_path(path: str) -> str:
    """A checkpoint path or hub id as given; `tiny` is the embedded tiny model's cache directory,
    built there on first use (a second process waits for nothing: it builds its own copy aside and
    the first one published wins)."""
    if path != "tiny":
        return path if Path(path).expanduser().exists() else hub_model(path)
    from ..tiny import tiny_path

    return str(tiny_path())


def hub_model(repo_id: str, cache_dir: str | None = None) -> str:
    """A path that is no local directory is a hub id. Where the hub cannot be reached (an offline
    machine, a typo in a local path) say so now, not after huggingface_hub has retried every file
    for minutes: load from the local hub cache if it holds the model, else stop with the reason."""
    from huggingface_hub import constants, try_to_load_from_cache

    if Path(repo_id).is_absolute() or repo_id.startswith((".", "~")) or repo_id.count("/") > 1:
        raise UserError(f"model path {repo_id!r}: no such directory")   # plainly local: no hub id
    if constants.HF_HUB_OFFLINE or hub_reachable():
        return repo_id
    try:
        cached = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir)
    except ValueError:   # not even a valid repo id
        cached = None
    if isinstance(cached, str):
        return str(Path(cached).parent)
    raise UserError(f"model path {repo_id!r}: no such local directory, and the Hugging Face hub "
                    f"({constants.ENDPOINT}) cannot be reached to download it as a hub id")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a connection to the hub's host opens (always assumed through a proxy, which resolves
    names itself)."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_model_and_processor(model_args):
    from transformers import JanusForConditionalGeneration, JanusProcessor

    path = resolve_model_path(model_args.path)
    kwargs = {"dtype": getattr(torch, model_args.dtype)}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    quantization = quantization_config(model_args)
    if quantization is not None:
        kwargs.update(quantization_config=quantization, device_map={"": device()})
    try:
        processor = JanusProcessor.from_pretrained(path)
        model = JanusForConditionalGeneration.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise RecipeError(f"model.path: cannot load a Janus checkpoint from {path!r}: {err}") from None
    if quantization is not None:
        model = prepare_kbit(model)
    freeze_vq(model)
    return model, processor


def device() -> torch.device:
    """This process's device as accelerate sees it: one GPU per rank under torchrun / accelerate
    launch (each rank loads its copy onto its own card), else the CPU."""
    from accelerate import PartialState

    return PartialState().device


def quantization_skip_modules() -> list[str]:
    """Everything but the language model's decoder stays in the compute dtype: the vision tower,
    aligners, VQ model, generation embeddings/aligner/head and `lm_head` hold ~1.3B of
    Janus-Pro-7B's 7.4B weights (by its architecture sizes), and the two output heads are where
    4-bit rounding would hurt the logits most."""
    return ["lm_head", VQ_PATH] + [p for c, p in COMPONENT_PATHS.items() if c != "llm"]


def quantization_config(model_args):
    """`model.quantization` as a transformers `BitsAndBytesConfig` (None for `none`)."""
    from transformers import BitsAndBytesConfig

    skip = quantization_skip_modules()   # a list given here replaces transformers' default skips
    if model_args.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    if model_args.quantization == "4bit":
        # QLoRA's settings: NF4 with double quantization, matmuls in the recipe's dtype.
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=getattr(torch, model_args.dtype), llm_int8_skip_modules=skip)
    return None


def prepare_kbit(model):
    """PEFT's preparation of a quantized base model for training.

    `use_gradient_checkpointing=False`: PEFT's default would switch checkpointing on behind the
    recipe's back; `train.gradient_checkpointing` decides, and the Trainer applies it.
    PEFT also upcasts every non-quantized bf16/fp16 parameter to fp32. We keep that: the model runs
    in one dtype around its 4/8-bit matmuls (bitsandbytes casts their output back to the input's
    dtype), norms run in fp32, and whatever trains fully (`lora.modules_to_save`) gets fp32 master
    weights, whose small AdamW updates bf16 would round away (see `train_in_fp32` for TRL's cast).
    The price is fp32 copies of the frozen unquantized modules (about +2.7 GB for Janus-Pro-7B);
    under bf16 autocast on a GPU their matmuls still run in bf16.
    """
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def train_in_fp32(model) -> None:
    """Trainable parameters back to fp32, after TRL's `SFTTrainer.__init__` and before `train()`
    builds the optimizer.

    On a quantized model TRL casts every trainable parameter to bf16 (its reading of the QLoRA
    paper), `lora.modules_to_save` included. A fully trained module then meets fp32 activations
    wherever no autocast runs (CPU, fp32 recipes) and the forward fails ("mat1 and mat2 must have
    the same dtype"), and bf16 master weights round small AdamW updates away (why TRL already
    exempts DoRA's magnitude). LoRA and saved modules are small: fp32 costs little.
    """
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


def check_quantization(quantization: str) -> None:
    """Fail before any weight loads where bitsandbytes cannot quantize on this machine.

    Called at the start of training. bitsandbytes imports even where it has no kernel for the
    device, so a tiny quantization on the training device is the proof that the backend is there.
    """
    if quantization == "none":
        return
    where = f"model.quantization={quantization}"
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as bnb_functional
    except Exception as err:   # not installed, or its native library fails to load
        raise RecipeError(f"{where} needs bitsandbytes, which cannot be imported here ({err}); "
                          "`pip install bitsandbytes`, or set model.quantization=none") from None
    where_to = device()
    try:
        probe = torch.randn(64, 64, device=where_to)
        if quantization == "4bit":
            bnb_functional.quantize_4bit(probe, blocksize=64, quant_type="nf4")
        else:
            bnb_functional.int8_vectorwise_quant(probe.half())
    except Exception as err:   # no kernel registered for this device type
        raise RecipeError(f"{where}: bitsandbytes {bnb.__version__} has no {quantization} backend for "
                          f"device '{where_to}' ({type(err).__name__}: {err}); set model.quantization=none") from None


def freeze_vq(model) -> None:
    """The VQ tokenizer is frozen in every Janus training stage."""
    vq = model.get_submodule(VQ_PATH)
    vq.requires_grad_(False)
    vq.eval()
def adapter_base(adapter: str | Path) -> str:
    """The base model an adapter was trained on (`base_model_name_or_path` of its config)."""
    from peft import PeftConfig

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise UserError(f"adapter={adapter}: no adapter_config.json there (not a PEFT adapter directory)")
    try:
        base = PeftConfig.from_pretrained(str(adapter)).base_model_name_or_path
    except (OSError, ValueError, TypeError) as err:
        raise UserError(f"adapter={adapter}: cannot read its adapter_config.json: {err}") from None
    if not base:
        raise UserError(f"{Path(adapter) / 'adapter_config.json'} names no base_model_name_or_path: "
                        "pass the base model, model=PATH")
    return base


def has_processor(path: str | Path) -> bool:
    path = Path(path)
    return (path / "tokenizer_config.json").is_file() and any((path / f).is_file() for f in _PROCESSOR_FILES)


def load_base(model_path: str, dtype: str = "float32"):
    """A `JanusForConditionalGeneration` in eval mode on the best device, or a UserError."""
    from transformers import JanusForConditionalGeneration

    if dtype not in DTYPES:
        raise UserError(f"dtype={dtype}: expected one of {', '.join(DTYPES)}")
    path = resolve_model_path(model_path)
    try:
        model = JanusForConditionalGeneration.from_pretrained(path, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load a Janus checkpoint from {model_path!r}: {err}") from None
    return model.to(device()).eval()


def attach_adapter(model, adapter: str | Path):
    """Wrap `model` with a LoRA adapter exactly as a user would: plain `PeftModel.from_pretrained`."""
    from peft import PeftModel

    adapter_base(adapter)  # a clear error for a directory that is not an adapter
    try:
        return PeftModel.from_pretrained(model, str(adapter)).eval()
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"adapter={adapter}: cannot load it onto this base model: {err}") from None


def load_processor(model_path: str, adapter: str | Path | None = None):
    """From the adapter directory when it carries processor files (`janus-ft sft` saves them there),
    else from the base."""
    from transformers import JanusProcessor

    source = adapter if adapter is not None and has_processor(adapter) else resolve_model_path(model_path)
    try:
        return JanusProcessor.from_pretrained(str(source))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load a Janus processor from {source}: {err}") from None
