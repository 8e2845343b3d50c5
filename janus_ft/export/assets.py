"""The files around the weights when converting a Janus checkpoint: tokenizer, processor
(chat template, image preprocessing) and generation config, in both layouts.

DeepSeek's side is what its `VLChatProcessor.from_pretrained` reads with transformers 4.x
(`LlamaTokenizerFast` + `tokenizer.json`, a `VLMImageProcessor` preprocessor_config.json and a
processor_config.json with `sft_format`); the native side is a `JanusProcessor` with the
checkpoint's chat template and a `GenerationConfig` carrying the classifier-free-guidance defaults.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import UserError
from ..janus import BOI, EOI, FORMATS, PAD, chat_template, generation_config
from ..janus import IMAGE_PLACEHOLDER as IMAGE
from .io import read_json, write_json

PRO_USER, PRO_ASSISTANT = FORMATS["janus-pro"].user, FORMATS["janus-pro"].assistant

_JANUS_13B_ROLES = ("User", "Assistant")


# --------------------------------------------------------------------------- DeepSeek -> native

def load_deepseek_tokenizer(source: Path):
    """The checkpoint's tokenizer with Janus's image tokens named the way `JanusProcessor` needs.

    Loaded straight from tokenizer.json (DeepSeek's byte-level BPE): the `LlamaTokenizerFast` class
    its config names would make transformers 5 guess at a conversion.
    """
    from transformers import PreTrainedTokenizerFast

    if not (source / "tokenizer.json").is_file():
        raise UserError(f"{source}: no tokenizer.json (the tokenizer files must sit next to config.json)")
    try:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(
            source, extra_special_tokens={"image_token": IMAGE, "boi_token": BOI, "eoi_token": EOI})
    except Exception as err:  # a broken tokenizer file is the user's input
        raise UserError(f"{source}: cannot load the tokenizer ({err})") from err
    vocab = tokenizer.get_vocab()
    for token in (IMAGE, BOI, EOI):
        if token not in vocab:
            raise UserError(f"{source}: the tokenizer has no '{token}' token (not a Janus tokenizer?)")
    if tokenizer.pad_token is None:  # the pad id differs between checkpoints: take it by name
        if PAD not in vocab:
            raise UserError(f"{source}: the tokenizer has no pad token and no '{PAD}'")
        tokenizer.pad_token = PAD
    settings = read_json(source / "tokenizer_config.json")
    # DeepSeek's code tokenizes with LlamaTokenizerFast, which prepends BOS unless told not to.
    if settings.get("add_bos_token", True) and tokenizer("a").input_ids[:1] != [tokenizer.bos_token_id]:
        tokenizer.add_bos_token = True
        tokenizer.update_post_processor()
    if "padding_side" not in settings:
        tokenizer.padding_side = "left"  # batched prompts are left-padded, as DeepSeek's processor does
    return tokenizer


def token_ids(tokenizer) -> dict[str, int]:
    """The ids a converted config needs, read from the tokenizer (they differ between checkpoints)."""
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id, "image_token_id": tokenizer.convert_tokens_to_ids(IMAGE)}


def pick_chat_template(source: Path, tokenizer, fmt: str) -> tuple[str, list[str]]:
    """The chat template for the converted processor, and a note when it had to be guessed.

    Original checkpoints carry no template, and Janus-1.3B and Janus-Pro configs look alike (both
    say `sft_format: deepseek`, whose meaning DeepSeek's code changed when Janus-Pro came out).
    """
    if fmt == "janus-pro":
        return chat_template(PRO_USER, PRO_ASSISTANT), []
    if fmt == "janus":
        return chat_template(*_JANUS_13B_ROLES), []
    if fmt != "auto":
        raise UserError(f"format must be auto, janus-pro or janus, got {fmt!r}")
    if tokenizer.chat_template:
        return tokenizer.chat_template, []
    sft_format = read_json(source / "processor_config.json").get("sft_format")
    if sft_format == "deepseek_old" or any("janus-1.3b" in part.lower() for part in source.resolve().parts):
        return chat_template(*_JANUS_13B_ROLES), [
            "used the Janus-1.3B chat format (User:/Assistant:); pass fmt=janus-pro if this is Janus-Pro"]
    return chat_template(PRO_USER, PRO_ASSISTANT), [
        "used the Janus-Pro chat format (<|User|>/<|Assistant|>); pass fmt=janus for Janus-1.3B"]


def _native_processor(source: Path, tokenizer, template: str, vision_config):
    from transformers import JanusProcessor
    from transformers.models.janus.image_processing_pil_janus import (
        JanusImageProcessorPil,
    )

    # VLMImageProcessor fields; its defaults where the file is absent (Janus ships mean = std = 0.5).
    pre = read_json(source / "preprocessor_config.json")
    size = pre.get("image_size", vision_config.image_size)
    image_processor = JanusImageProcessorPil(
        size={"height": size, "width": size}, min_size=pre.get("min_size", 14),
        image_mean=pre.get("image_mean", [0.5, 0.5, 0.5]), image_std=pre.get("image_std", [0.5, 0.5, 0.5]),
        rescale_factor=pre.get("rescale_factor", 1 / 255), do_normalize=pre.get("do_normalize", True))
    tokenizer.chat_template = template
    return JanusProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=template,
                          use_default_system_prompt=True, num_image_tokens=vision_config.num_image_tokens)


def write_native_assets(out: Path, source: Path, tokenizer, template: str, config) -> None:
    """Processor (tokenizer, chat template, image processor) and generation_config.json."""
    _native_processor(source, tokenizer, template, config.vision_config).save_pretrained(out)
    generation_config(tokenizer).save_pretrained(out)


# --------------------------------------------------------------------------- native -> DeepSeek

def load_native_processor(source: Path):
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(source)
    except Exception as err:
        raise UserError(f"{source}: cannot load the processor/tokenizer ({err})") from err
    if getattr(processor, "tokenizer", None) is None or getattr(processor, "image_processor", None) is None:
        raise UserError(f"{source}: no Janus processor (tokenizer + image processor) next to the weights")
    return processor


def _deepseek_tokenizer_files(out: Path, source: Path, tokenizer, template: str | None) -> None:
    # tokenizer.json is the part both transformers 4.x and 5.x read: copy it byte for byte.
    if (source / "tokenizer.json").is_file():
        shutil.copyfile(source / "tokenizer.json", out / "tokenizer.json")
    else:
        tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    named = {tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token}
    specials = [t.content for _, t in sorted(tokenizer.added_tokens_decoder.items())
                if t.special and t.content not in named]
    tokens = {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token}
    write_json(out / "special_tokens_map.json", {**tokens, "additional_special_tokens": specials})
    # DeepSeek's processor asks for LlamaTokenizerFast (transformers 4.x).
    # (No add_bos_token: LlamaTokenizerFast's default adds BOS, and tokenizer.json already says so.)
    config = {**tokens, "unk_token": tokenizer.unk_token, "clean_up_tokenization_spaces": False, "legacy": True,
              "model_max_length": tokenizer.model_max_length, "padding_side": tokenizer.padding_side,
              "tokenizer_class": "LlamaTokenizerFast", "use_default_system_prompt": False}
    if template:  # unused by DeepSeek's code; keeps the template for converting back
        config["chat_template"] = template
    write_json(out / "tokenizer_config.json", config)


def write_deepseek_assets(out: Path, source: Path, processor, config) -> None:
    """tokenizer files, preprocessor_config.json and processor_config.json in DeepSeek's style."""
    template = processor.chat_template or processor.tokenizer.chat_template
    _deepseek_tokenizer_files(out, source, processor.tokenizer, template)
    images = processor.image_processor
    size = images.size["height"] if isinstance(images.size, dict) else images.size.height
    write_json(out / "preprocessor_config.json", {
        "background_color": list(images.background_color), "do_normalize": images.do_normalize,
        "image_mean": list(images.image_mean), "image_processor_type": "VLMImageProcessor",
        "image_size": size, "image_std": list(images.image_std), "min_size": images.min_size,
        "processor_class": "VLChatProcessor", "rescale_factor": images.rescale_factor})
    # sft_format "deepseek" is Janus-Pro's <|User|> format in DeepSeek's current code;
    # "deepseek_old" is Janus-1.3B's User:/Assistant: format.
    sft_format = "deepseek" if template is None or PRO_USER in template else "deepseek_old"
    write_json(out / "processor_config.json", {
        "add_special_token": False, "ignore_id": -100, "image_tag": IMAGE, "mask_prompt": True,
        "num_image_tokens": processor.num_image_tokens, "processor_class": "VLChatProcessor",
        "sft_format": sft_format})
