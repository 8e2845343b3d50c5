"""`janus-ft generate`: text-to-image with classifier-free guidance, through transformers' own
`JanusForConditionalGeneration.generate(generation_mode="image")`; image editing (source images +
instruction -> image) with our own sampling loop, since the processor drops input images in image
mode.

The prompt is rendered as the data layer renders a generation record (`{R_u}: caption\\n\\n{R_a}:`,
no system prompt) and the processor in image mode appends `<begin_of_image>`, so sampling starts
from the exact prefix the generation loss trained on. An edit's rows are the data layer's edit
rows (`data.edit.edit_row`), embedded by the training forward's own `input_embeddings`, so an edit
is sampled from exactly the prefix, features and guidance branches it trained on. Codes are
decoded with the original Janus mapping (`janus_ft.data.vq.decode_codes_to_pil`).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image, ImageOps

from ..data.collate import collate, loss_plan
from ..data.conversation import render
from ..data.edit import FULL, NONE, SOURCES, edit_row, target_start
from ..data.images import open_rgb, pixel_values
from ..data.records import IMAGE_TAG, Record
from ..data.tokens import encode
from ..data.vq import codes_for_files, encode_images
from ..errors import UserError
from ..janus import TASK_IDS, SpecialIds
from ..model.loss import core_model, input_embeddings
from .prompts import to_model


def prompt_inputs(processor, caption: str, fmt: str) -> dict:
    """Input ids of a generation prompt: the data layer's rendering, `<begin_of_image>` appended by
    the processor in image mode (which adds no system prompt in that mode)."""
    if not caption.strip():
        raise UserError("the prompt is empty: a generation prompt needs a caption")
    record = Record(task="generation", turns=[(caption, IMAGE_TAG)], system="")
    text = render(record, fmt)[0].text
    return dict(processor(text=text, generation_mode="image", return_tensors="pt"))


def image_generation_config(model, tokenizer, cfg: float, temperature: float, n: int, top_k: int = 0,
                            top_p: float = 1.0):
    """The model's generation config with the ids CFG needs read from the tokenizer: the
    unconditional row keeps BOS and `<begin_of_image>` and pads the rest, and the pad id differs
    between checkpoints (docs/janus.md).

    `top_k=0, top_p=1` sample the whole guided distribution, as DeepSeek's reference sampler does;
    transformers would otherwise fill in its global default `top_k=50`."""
    config = model.generation_config.__class__.from_dict(model.generation_config.to_dict())
    special = SpecialIds.from_tokenizer(tokenizer)
    config.bos_token_id, config.pad_token_id = special.bos, special.pad
    config.generation_kwargs = {**(config.generation_kwargs or {}), "boi_token_id": special.boi}
    # transformers' Janus generate guides only when the scale is above 1; at or below 1 (1: the
    # conditional logits alone, 0: the unconditional ones) `sample_codes` brings the guidance
    config.guidance_scale = cfg if cfg > 1 else 1.0
    config.num_return_sequences, config.do_sample = n, temperature > 0
    if config.do_sample:   # (greedy decoding warns about sampling settings it ignores)
        config.top_k, config.top_p = top_k, top_p
    config.temperature = temperature if temperature > 0 else 1.0
    return config


class Guidance:
    """Classifier-free guidance at any scale: `uncond + scale * (cond - uncond)` over a batch whose
    first half is conditional (the formula of DeepSeek's sampler; transformers' own processor
    refuses scales <= 1, where its Janus generate then fails on the doubled batch)."""

    def __init__(self, scale: float):
        self.scale = scale

    def __call__(self, input_ids, scores):
        cond, uncond = scores.chunk(2, dim=0)
        return uncond + self.scale * (cond - uncond)


@torch.no_grad()
def sample_codes(model, processor, caption: str, fmt: str, n: int = 4, cfg: float = 5.0,
                 temperature: float = 1.0, seed: int = 0, top_k: int = 0, top_p: float = 1.0) -> torch.LongTensor:
    """(n, num_image_tokens) VQ codes sampled for one caption, seeded for reproducibility."""
    from transformers import LogitsProcessorList

    inputs = to_model(prompt_inputs(processor, caption, fmt), model)
    config = image_generation_config(model, processor.tokenizer, cfg, temperature, n, top_k, top_p)
    guidance = LogitsProcessorList([] if cfg > 1 else [Guidance(cfg)])
    torch.manual_seed(seed)
    codes = model.generate(**inputs, generation_mode="image", generation_config=config, logits_processor=guidance)
    return codes.long().cpu()


def edit_record(instruction: str, n_sources: int) -> Record:
    """The edit record of an instruction (its target left open): sources without `<image>` tags go
    at the start of the instruction, as the data layer places untagged images."""
    tags = instruction.count(IMAGE_TAG)
    if n_sources < 1:
        raise UserError("an edit needs at least one source image")
    if tags and tags != n_sources:
        raise UserError(f"{n_sources} source image(s) given but {tags} <image> tag(s) in the prompt")
    if not instruction.replace(IMAGE_TAG, "").strip():
        raise UserError("the instruction is empty: an edit needs an instruction")
    query = instruction if tags else IMAGE_TAG * n_sources + instruction
    images = [Path(f"source-{i}") for i in range(n_sources)] + [Path("target")]
    return Record(task="edit", turns=[(query, IMAGE_TAG)], images=images, system="")


def edit_rows(model, processor, instruction: str, images: list, fmt: str, conditions: tuple[str, ...],
              source_codes: bool = False) -> list[dict]:
    """One sample per condition (`data.edit.FULL`, `SOURCES`, `NONE`): the edit's rows up to the
    target's `<begin_of_image>`, built by the data layer as training builds them. `images`: PIL
    images, or files (opened and VQ-encoded, through the code cache, as training does)."""
    special, n = SpecialIds.from_tokenizer(processor.tokenizer), processor.num_image_tokens
    ids, labels = encode(render(edit_record(instruction, len(images)), fmt), processor.tokenizer, special, n)
    files = [Path(x) for x in images if not isinstance(x, Image.Image)]
    pictures = [x if isinstance(x, Image.Image) else open_rgb(Path(x), field="--image") for x in images]
    codes = None
    if source_codes:
        codes = (codes_for_files(model, files) if len(files) == len(images) else encode_images(model, pictures)).tolist()
    pixels = pixel_values(processor.image_processor, pictures)
    rows = []
    for condition in conditions:
        row = edit_row(ids, labels, special, condition, codes)
        stop = target_start(row["input_ids"].tolist(), special.boi) + 1
        row = {k: v[:stop] for k, v in row.items()} | {"task": TASK_IDS["edit"]}
        if condition != NONE:
            row["pixel_values"] = pixels
        rows.append(row)
    return rows


def edit_guidance(logits: torch.Tensor, cfg: float, image_cfg: float) -> torch.Tensor:
    """Two-scale guidance (InstructPix2Pix's) over the rows' logits (conditions, n, vocab): c keeps
    instruction and sources, s the sources only, u nothing (present when image_cfg != 1):

        u + image_cfg * (s - u) + cfg * (c - s)        (image_cfg = 1: s + cfg * (c - s))

    >>> edit_guidance(torch.tensor([[[2.0]], [[1.0]], [[0.5]]]), cfg=3.0, image_cfg=2.0).item()
    4.5
    """
    c, s = logits[0], logits[1]
    if len(logits) == 2:
        return s + cfg * (c - s)
    u = logits[2]
    return u + image_cfg * (s - u) + cfg * (c - s)


def pick_codes(scores: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """One code per row: greedy at temperature 0, else sampled (after top-k / top-p when set)."""
    from transformers import TopKLogitsWarper, TopPLogitsWarper

    if temperature == 0:
        return scores.argmax(-1)
    scores = scores / temperature
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return torch.multinomial(scores.softmax(-1), 1)[:, 0]


@torch.no_grad()
def sample_edit_codes(model, processor, instruction: str, images: list, fmt: str, n: int = 4, cfg: float = 5.0,
                      temperature: float = 1.0, seed: int = 0, top_k: int = 0, top_p: float = 1.0,
                      image_cfg: float = 1.0, source_codes: bool = False) -> torch.LongTensor:
    """(n, num_image_tokens) VQ codes of `n` edits of `images` (PIL images or files, the sources in
    order) by `instruction`, seeded. `source_codes`: the sources also enter as VQ codes, as a run
    with `data.edit_source_codes` trained them. Guidance: `edit_guidance` over the rows the edit
    trained on (`edit_rows`), N sequential steps with a KV cache, each drawing all n samples."""
    conditions = (FULL, SOURCES, NONE) if image_cfg != 1 else (FULL, SOURCES)
    rows = edit_rows(model, processor, instruction, images, fmt, conditions, source_codes)
    # Every condition keeps the layout's length (dropped parts become pad in place): no padding,
    # so no attention mask, and the cache's positions are every row's own.
    batch = collate([row for row in rows for _ in range(n)], processor.tokenizer.pad_token_id)
    core = core_model(model)
    plan = loss_plan(batch, core.config.image_token_id)
    batch = to_model(batch, model)
    plan = {k: v.to(batch["input_ids"].device) for k, v in plan.items()}
    embeds = input_embeddings(core, batch, plan, input_grad=False)
    llm, head = core.model.language_model, core.model.generation_head
    cache = kv_cache(llm)
    out = llm(inputs_embeds=embeds, use_cache=True, **cache)
    torch.manual_seed(seed)
    codes = []
    for step in range(processor.num_image_tokens):
        logits = head(out.last_hidden_state[:, -1]).float().view(len(conditions), n, -1)
        codes.append(pick_codes(edit_guidance(logits, cfg, image_cfg), temperature, top_k, top_p))
        if step + 1 < processor.num_image_tokens:
            following = core.prepare_embeddings_for_image_generation(codes[-1].repeat(len(conditions))[:, None])
            out = llm(inputs_embeds=following.to(embeds.dtype), use_cache=True, **cache)
    return torch.stack(codes, 1).long().cpu()


def kv_cache(llm) -> dict:
    """A fresh KV cache as the keyword the language model takes it by: transformers 5.24 renamed
    `past_key_values` to `cache` (the old name warns), 5.23 knows only the old one."""
    import inspect

    from transformers import DynamicCache

    name = "cache" if "cache" in inspect.signature(llm.forward).parameters else "past_key_values"
    return {name: DynamicCache(config=llm.config)}


def adapter_source_codes(adapter: str | Path | None) -> bool:
    """Whether the run that wrote `adapter` trained edits with source codes (`data.edit_source_codes`
    in its recipe.yaml): sampling must lay an edit out as training did."""
    recipe = Path(adapter) / "recipe.yaml" if adapter else None
    if recipe is None or not recipe.is_file():
        return False
    import yaml

    data = (yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}).get("data") or {}
    return bool(data.get("edit_source_codes", False))


def edit_sheet(rows: list[list[Image.Image]], gap: int = 2) -> Image.Image:
    """Rows of images (e.g. source | target | result) as one grid; a short row is filled with white
    tiles on the left, so the last columns line up, and every image is fitted (centre-cropped) to
    the size of the row's last image."""
    width = max(len(r) for r in rows)
    tiles = []
    for row in rows:
        size = row[-1].size
        blank = Image.new("RGB", size, "white")
        tiles += [blank] * (width - len(row)) + [ImageOps.fit(im.convert("RGB"), size) for im in row]
    return contact_sheet(tiles, columns=width, gap=gap)


def contact_sheet(images: list[Image.Image], columns: int | None = None, gap: int = 2) -> Image.Image:
    """Images tiled left to right, top to bottom, on white, `gap` pixels apart.

    >>> sheet = contact_sheet([Image.new("RGB", (8, 8))] * 3)
    >>> sheet.size
    (18, 18)
    """
    if not images:
        raise ValueError("no images to tile")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    w, h = max(im.width for im in images), max(im.height for im in images)
    sheet = Image.new("RGB", (columns * w + (columns - 1) * gap, rows * h + (rows - 1) * gap), "white")
    for i, im in enumerate(images):
        sheet.paste(im, ((i % columns) * (w + gap), (i // columns) * (h + gap)))
    return sheet


def save_images(images: list[Image.Image], out: Path, grid: Image.Image | None = None) -> Path:
    """0.png .. n-1.png and grid.png (`grid`, by default the images' contact sheet) in `out`."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"output={out}: cannot create it ({err.strerror or err})") from None
    for i, im in enumerate(images):
        im.save(out / f"{i}.png")
    (grid or contact_sheet(images)).save(out / "grid.png")
    return out
