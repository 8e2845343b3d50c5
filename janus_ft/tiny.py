"""A tiny random Janus checkpoint, built offline, for demos and tests.

Everything is real except the weights: a `JanusConfig` with all three visual paths, a byte-level
BPE tokenizer trained with `tokenizers` on bundled text and carrying Janus's special-token
strings, the Janus-Pro (or Janus-1.3B) chat template, an image processor and a generation config
with the classifier-free-guidance defaults. The result loads with plain `transformers`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .files import publish, tiny_model_dir
from .janus import BOI, BOS, EOI, EOS, FORMATS, PAD, chat_template, generation_config
from .janus import IMAGE_PLACEHOLDER as IMAGE

PRO_USER, PRO_ASSISTANT = FORMATS["janus-pro"].user, FORMATS["janus-pro"].assistant

# Janus's real tokenizer has more specials; the ones janus_ft relies on are listed first.
SPECIAL_TOKENS = [BOS, EOS, PAD, IMAGE, BOI, EOI, PRO_USER, PRO_ASSISTANT,
                  "<patch_placeholder>", "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<|grounding|>"]

IMAGE_SIZE = 64      # 64 px / patch 16 -> 4x4 = 16 image tokens on the understanding path
PATCH_SIZE = 16
CODEBOOK_SIZE = 256  # VQ codebook entries (16384 in the real model)

# Bundled text the BPE is trained on: enough English, digits and LaTeX to tokenize the sample data.
_CORPUS = """
You are a helpful language and vision assistant. You are able to understand the visual content
that the user provides, and assist the user with a variety of tasks using natural language.
User Assistant System What is shown in the image? Describe the picture. Which is brighter?
The first. The second. A cat. A dog. A red circle. A green square. A blue triangle. A yellow star.
red green blue yellow purple orange white black gray circle square triangle star shape colour color
Convert the formula into LaTeX. What colour is the shape? Answer with one word.
A watercolor fox in the snow. A photo of a product on a white background. A painting of a city.
\\frac{a}{b} \\sqrt{x} x^2 + y^2 = z^2 \\alpha \\beta \\gamma \\sum_{i=1}^{n} i \\int_0^1 f(x) dx
0 1 2 3 4 5 6 7 8 9 10 100 1000 + - * / = ( ) [ ] { } < > , . ; : ! ? ' " _ ^ \\ | # $ % &
the a an of in on at to is are was were be this that it with for and or not yes no
hello world question answer image picture photo text caption style draw paint generate
"""



def _train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    # Byte-level like DeepSeek's tokenizer, no prefix space: "Assistant:" + " text" stays stable.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_CORPUS] * 4, trainer)
    return tok


def build_tokenizer(fmt: str = "janus-pro", vocab_size: int = 640):
    """A `PreTrainedTokenizerFast` with Janus's special tokens and BOS prepended like DeepSeek's."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _train_tokenizer(vocab_size)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)])
    user, assistant = FORMATS[fmt].user, FORMATS[fmt].assistant
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=SPECIAL_TOKENS[3:],
        extra_special_tokens={"image_token": IMAGE, "boi_token": BOI, "eoi_token": EOI},
        model_max_length=4096, padding_side="left",
        chat_template=chat_template(user, assistant))


def tiny_config(tokenizer, vq_channels: int = 32, llm: str | dict | None = None):
    """The tiny model's config; `llm` names a `SIZE_PRESETS` entry (or gives such sizes) whose
    language-model sizes replace the 64-wide, 2-layer LLM (the visual paths stay tiny: a model that
    conditions on its prompt)."""
    from transformers import (
        JanusConfig,
        JanusVisionConfig,
        JanusVQVAEConfig,
        LlamaConfig,
    )

    default = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
    sizes = dict(llm) if isinstance(llm, dict) else SIZE_PRESETS[llm] if llm else default
    hidden = sizes["hidden_size"]
    text = LlamaConfig(
        vocab_size=len(tokenizer), num_key_value_heads=sizes["num_attention_heads"], max_position_embeddings=1024,
        **sizes,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    n_tokens = (IMAGE_SIZE // PATCH_SIZE) ** 2
    vision = JanusVisionConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE, projection_dim=hidden, num_image_tokens=n_tokens)
    # VQ downsamples by 2**(len(multiplier)-1) = 16: 64 px -> 4x4 codes, matching the vision path.
    vq = JanusVQVAEConfig(
        embed_dim=8, num_embeddings=CODEBOOK_SIZE, latent_channels=32, base_channels=vq_channels,
        channel_multiplier=[1, 1, 1, 1, 1], num_res_blocks=1, projection_dim=hidden,
        image_token_embed_dim=hidden)
    # The original LM head is separate from the input embeddings (docs/janus.md, original layout).
    return JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                       image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
                       tie_word_embeddings=False)


# Real language-model sizes of Janus-Pro (DeepSeek-LLM 1.3B / 7B, vocab 102400; docs/janus.md).
# transformers' default JanusVisionConfig and JanusVQVAEConfig are the real SigLIP-L/16 @ 384 tower
# (24 layers, hidden 1024, 576 tokens) and VQ-16 tokenizer (codebook 16384). `mid` is a benchmark
# model whose step is short enough on a CPU for the framework's own milliseconds to show: a
# 512 x 4 LLM with the real vocabulary and heads, and one real-width SigLIP-L block at 384 px
# (still 576 image tokens), so both image paths cost what they cost in Janus per token. `narrow`
# is the tiny model's LLM widened to 256 x 4 (head dim 64, as in Janus): with the tiny visual
# paths and vocabulary, its steps on rows of thousands of tokens are the LLM's, attention included
# (the packing benchmark, scripts/bench_packing.py).
SIZE_PRESETS = {
    "mid": {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 4, "num_attention_heads": 8},
    "narrow": {"hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 4, "num_attention_heads": 4},
    "janus-pro-1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 24, "num_attention_heads": 16},
    "janus-pro-7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 30, "num_attention_heads": 32},
}
VISION_LAYERS = {"mid": 1}   # SigLIP-L blocks where a preset has fewer than the real 24


def sized_config(tokenizer, preset: str):
    """A `JanusConfig` of a real model's architecture, for benchmarks with random weights. The tiny
    tokenizer is kept: its ids are a subset of the real 102400-row embedding and LM head."""
    from transformers import (
        JanusConfig,
        JanusVisionConfig,
        JanusVQVAEConfig,
        LlamaConfig,
    )

    sizes = SIZE_PRESETS[preset]
    hidden = sizes["hidden_size"]
    text = LlamaConfig(
        vocab_size=102400, num_key_value_heads=sizes["num_attention_heads"], max_position_embeddings=16384,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **sizes)
    vision = JanusVisionConfig(projection_dim=hidden, num_hidden_layers=VISION_LAYERS.get(preset, 24))
    return JanusConfig(text_config=text, vision_config=vision,
                       vq_config=JanusVQVAEConfig(projection_dim=hidden, image_token_embed_dim=hidden),
                       image_token_id=tokenizer.convert_tokens_to_ids(IMAGE), tie_word_embeddings=False)


def build_processor(tokenizer, image_size: int = IMAGE_SIZE, patch_size: int = PATCH_SIZE):
    from transformers import JanusProcessor
    from transformers.models.janus.image_processing_pil_janus import (
        JanusImageProcessorPil,
    )

    image_processor = JanusImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5], min_size=14)
    return JanusProcessor(image_processor=image_processor, tokenizer=tokenizer,
                          chat_template=tokenizer.chat_template, use_default_system_prompt=True,
                          num_image_tokens=(image_size // patch_size) ** 2)


def build_tiny(output_dir: str | Path, fmt: str = "janus-pro", seed: int = 0, vq_channels: int = 32,
               llm: str | dict | None = None) -> Path:
    """Write a tiny random Janus checkpoint (config, safetensors, tokenizer, processor) to `output_dir`.

    `vq_channels` (a multiple of 32): the VQ decoder's width. At 32 every GroupNorm group holds one
    channel, which erases a channel's mean: every code decodes to nearly the same colour (image
    rewards cannot tell samples apart). At 128 random codes decode to visibly different colours,
    which is what a colour reward needs (`recipes/grpo_t2i.yaml`). `llm` (a `SIZE_PRESETS` name,
    e.g. "mid", or a dict of LlamaConfig sizes) gives it a larger language model (see `tiny_config`)."""
    from transformers import JanusForConditionalGeneration

    if fmt not in ("janus-pro", "janus"):
        raise ValueError(f"format must be 'janus-pro' or 'janus', got {fmt!r}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(fmt)
    torch.manual_seed(seed)
    config = tiny_config(tokenizer, vq_channels, llm)
    # Real checkpoints have trained heads with large logits; a 64-wide random model initialised at
    # std 0.02 cannot produce a confident token through its final RMSNorm and frozen lm_head, so
    # LoRA could never fit anything. Initialise the Janus-level weights wider instead.
    config.initializer_range = 0.1
    model = JanusForConditionalGeneration(config)
    if vq_channels != 32:
        _widen_decoder(model)
    model.generation_config = generation_config(tokenizer)
    model.save_pretrained(out)
    build_processor(tokenizer).save_pretrained(out)
    note = {"format": fmt, "seed": seed} | ({"vq_channels": vq_channels} if vq_channels != 32 else {})
    note |= {"llm": llm} if llm else {}
    (out / "janus_ft_tiny.json").write_text(json.dumps(note) + "\n")
    return out


def _widen_decoder(model, std: float = 0.1) -> None:
    """Decoder convolutions drawn at std 0.1 (biases 0): at the default 0.02 the random decoder maps
    every code sequence to almost the same mean colour."""
    vq = model.model.vqmodel
    with torch.no_grad():
        for module in [vq.post_quant_conv, *vq.decoder.modules()]:
            if isinstance(module, torch.nn.Conv2d):
                module.weight.normal_(0, std)
                module.bias.zero_()


def tiny_path() -> Path:
    """The embedded tiny model (`model.path: tiny`) in the cache (`janus_ft.files.tiny_model_dir`),
    built there on first use."""
    import os

    target = tiny_model_dir()
    if not (target / "janus_ft_tiny.json").exists():
        # Built beside the target and renamed: another process (a second rank, a parallel test)
        # never sees a half-written checkpoint; if it won the race, ours is simply discarded.
        staged = target.with_name(f".{target.name}-{os.getpid()}")
        build_tiny(staged)
        publish(staged, target, keep_existing=True)
    return target
