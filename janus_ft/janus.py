"""Janus facts: the one place janus_ft writes down what it knows about Janus / Janus-Pro.

Special tokens, conversation formats, the default system prompt, tasks, model components, the
label convention and the generation defaults. Every other module imports them from here; where
each fact comes from (DeepSeek's Janus repository, transformers' Janus model) is in docs/janus.md.
Token *ids* are never written down: they differ between checkpoints (the pad id is 100002 in
Janus-Pro-1B and 100015 in Janus-Pro-7B), so `SpecialIds` reads them from the tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

# --- special tokens (strings; ids come from the tokenizer) -------------------------------------
BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
IMAGE_PLACEHOLDER = "<image_placeholder>"   # one per image feature; the model scatters features here
BOI = "<begin_of_image>"
EOI = "<end_of_image>"
# Typed into a record's text these would be tokenized as the real tokens, putting image positions
# where no image (or target) is: records may not contain them.
IMAGE_TOKENS = (IMAGE_PLACEHOLDER, BOI, EOI)
# Where a dataset record puts an image (ms-swift / LLaVA convention); rendered as an image part.
IMAGE_TAG = "<image>"


# --- conversation formats -----------------------------------------------------------------------
@dataclass(frozen=True)
class Format:
    name: str
    user: str
    assistant: str


FORMATS = {
    "janus-pro": Format("janus-pro", "<|User|>", "<|Assistant|>"),
    "janus": Format("janus", "User", "Assistant"),   # Janus-1.3B and JanusFlow
}

# What transformers' JanusProcessor prepends (with "\n\n") to understanding prompts at inference.
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)


def chat_template(user: str, assistant: str) -> str:
    """Jinja chat template laying out turns and image parts the way the converted hub checkpoints do.

    A user turn renders `{user}: {content}\\n\\n`, an assistant turn `{assistant}: {content}{EOS}`,
    other roles `{Role}: {content}{EOS}`; the generation prompt is `{assistant}:`. An image part is
    `<image_placeholder>`, preceded by a newline unless it is the first part and followed by one
    unless it is the last; the first text part is left-stripped and the last right-stripped.
    """
    return (
        "{%- for message in messages -%}"
        "{%- set role = message['role'] | lower -%}"
        f"{{%- if role == 'user' -%}}{{{{ '{user}: ' }}}}"
        f"{{%- elif role == 'assistant' -%}}{{{{ '{assistant}:' }}}}"
        "{%- if not (loop.last and not add_generation_prompt and message['content'][0]['type'] == 'text'"
        " and message['content'][0]['text'] == '') %} {% endif -%}"
        "{%- else -%}{{ message['role'] | capitalize ~ ': ' }}{%- endif -%}"
        "{%- set parts = message['content'] -%}"
        "{%- for part in parts -%}"
        "{%- if part['type'] == 'image' -%}"
        "{%- if not loop.first %}{{ '\\n' }}{% endif -%}"
        f"{IMAGE_PLACEHOLDER}"
        "{%- if not loop.last %}{{ '\\n' }}{% endif -%}"
        "{%- elif part['type'] == 'text' -%}"
        "{%- set text = part['text'] -%}"
        "{%- if loop.first %}{% set text = text.lstrip() %}{% endif -%}"
        "{%- if loop.last %}{% set text = text.rstrip() %}{% endif -%}"
        "{%- if not loop.first and parts[loop.index0 - 1]['type'] == 'text' %}{{ ' ' + text }}"
        "{%- else %}{{ text }}{% endif -%}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if not loop.last or add_generation_prompt -%}"
        "{%- if role == 'user' %}{{ '\\n\\n' }}{% else %}" + EOS + "{% endif -%}"
        "{%- endif -%}"
        "{%- endfor -%}"
        f"{{%- if add_generation_prompt %}}{assistant}:{{% endif -%}}"
    )


# --- tasks --------------------------------------------------------------------------------------
# In the order of Janus-Pro's stage-3 mixture (understanding : text : generation = 5 : 1 : 4), then
# image editing (source images + instruction -> image), appended so the first three ids keep their meaning.
TASKS = ("understanding", "text", "generation", "edit")
TASK_IDS = {task: i for i, task in enumerate(TASKS)}   # per-token task ids inside a batch
TASK_NAMES = dict(enumerate(TASKS))

# --- labels -------------------------------------------------------------------------------------
# Labels are aligned with input_ids (the model shifts); nothing is learned where they hold this.
IGNORE_INDEX = -100

# --- model components (transformers-native `JanusForConditionalGeneration`) ----------------------
COMPONENT_PATHS = {
    "llm": "model.language_model",
    "aligner": "model.aligner",
    "vision": "model.vision_model",
    "gen_head": "model.generation_head",
    "gen_aligner": "model.generation_aligner",
    "gen_embed": "model.generation_embeddings",
}
COMPONENTS = tuple(COMPONENT_PATHS)
VQ_PATH = "model.vqmodel"   # the image tokenizer: frozen in every Janus training stage
# Trained fully, the LLM also includes its output head (untied from the input embeddings in the
# original checkpoints).
FULL_EXTRA = {"llm": ["lm_head"]}

DTYPES = ("float32", "bfloat16", "float16")

# --- image generation defaults (DeepSeek's own sampling loop) ------------------------------------
CFG_SCALE = 5.0        # classifier-free guidance: logits = l_u + s * (l_c - l_u)
TEMPERATURE = 1.0


@dataclass(frozen=True)
class SpecialIds:
    """The special-token ids of one checkpoint, read from its tokenizer."""

    bos: int
    eos: int
    pad: int
    image: int
    boi: int
    eoi: int

    @classmethod
    def from_tokenizer(cls, tok) -> SpecialIds:
        ids = tok.convert_tokens_to_ids
        return cls(bos=tok.bos_token_id, eos=tok.eos_token_id, pad=tok.pad_token_id,
                   image=ids(IMAGE_PLACEHOLDER), boi=ids(BOI), eoi=ids(EOI))


def generation_config(tokenizer):
    """The `GenerationConfig` a Janus checkpoint ships: ids from its tokenizer, CFG defaults."""
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, guidance_scale=CFG_SCALE, temperature=TEMPERATURE,
        generation_kwargs={"boi_token_id": tokenizer.convert_tokens_to_ids(BOI)})
