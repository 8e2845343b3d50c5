"""`Janus`: a loaded Janus with its LoRA adapters, to chat with and draw from in Python. It is the
one object `janus-ft chat`, `janus-ft generate` and the `janus-ft ui` page use, so each answers and
draws exactly as the others do for the same inputs and seed.

    >>> from janus_ft import Janus
    >>> j = Janus.load("tiny")                                  # doctest: +SKIP
    >>> j.chat("What colour is the shape?", images=["shape.png"])   # doctest: +SKIP
    >>> j.draw("a red circle", n=4, cfg=5.0, seed=0)            # doctest: +SKIP

Adapters are loaded onto the one base as named PEFT adapters (`PeftModel.from_pretrained` for the
first, `load_adapter` for the others) and switched per call: `set_adapter` for an adapter,
`disable_adapter` for the base, so N adapters cost N adapters' weights, not N models. A lock makes
calls that reach the model one at a time, since switching adapters changes the shared model. Each
name answers with its own processor (the adapter's, when `janus-ft sft` saved one beside it).
Prompts are built as training builds them (`infer.prompts`); images are drawn with CFG exactly as
the generation loss trained them (`infer.generate`).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path

import torch
from PIL import Image

from ..data.conversation import detect_format
from ..data.images import stored_image
from ..data.records import Record
from ..data.vq import decode_codes_to_pil
from ..errors import UserError
from ..janus import CFG_SCALE
from ..model.loading import adapter_base, load_base, load_processor
from .chat import Decoding, answer, answer_batch
from .generate import adapter_source_codes, sample_codes, sample_edit_codes
from .prompts import prompt_record

BASE = "base"


def adapter_name(path: str | Path, taken) -> str:
    """A short unique name for an adapter directory: its folder name, numbered when taken.

    >>> adapter_name("runs/demo", {"base", "demo"})
    'demo-2'
    """
    stem = Path(path).resolve().name or "adapter"
    name, i = stem, 1
    while name in taken:
        i += 1
        name = f"{stem}-{i}"
    return name


def check_drawing(n: int, cfg: float, temperature: float, top_k: int, top_p: float) -> None:
    """The sampling settings of `draw`, checked before anything is sampled (or loaded)."""
    if n < 1:
        raise UserError(f"n must be >= 1, got {n}")
    if temperature < 0:
        raise UserError(f"temperature must be >= 0, got {temperature}")
    if cfg < 0 or top_k < 0 or not 0 < top_p <= 1:
        raise UserError(f"cfg and top_k must be >= 0 and 0 < top_p <= 1, got {cfg}, {top_k}, {top_p}")
    if temperature == 0 and n > 1:
        raise UserError("temperature 0 is greedy: every image would be the same; draw 1 image or sample")


class Janus:
    """A base model, its adapters by name (`names`), the one in use (`active`), a processor per name."""

    def __init__(self, model, processor, model_path: str = "", fmt: str = "auto"):
        self.model, self.model_path, self.format = model, str(model_path), fmt
        self.processors = {BASE: processor}
        self.adapters: dict[str, Path] = {}
        self.active = BASE
        self._lock = threading.RLock()

    @classmethod
    def load(cls, path: str | None = None, adapter: str | Path | None = None, dtype: str = "float32",
             format: str = "auto") -> Janus:
        """A transformers-native Janus directory, hub id or `"tiny"` (built when missing); without
        `path`, the base named in the adapter's `adapter_config.json`. `adapter` is loaded and used."""
        if path is None:
            if adapter is None:
                raise UserError("give path (a Janus checkpoint) or adapter (a LoRA adapter directory)")
            path = adapter_base(adapter)
        janus = cls(load_base(path, dtype), load_processor(path), path, format)
        if adapter is not None:
            janus.use(janus.load_adapter(adapter))
        return janus

    @property
    def names(self) -> list[str]:
        return [BASE, *self.adapters]

    def load_adapter(self, path: str | Path, name: str | None = None) -> str:
        """Load a LoRA adapter from disk onto the base; its name (default: the folder's) is returned.
        A UserError (no such directory, not an adapter, not for this base) leaves the loaded adapters
        as they were. The adapter in use does not change: `use(name)` or `adapter=` picks one."""
        from peft import PeftModel

        path = Path(str(path).strip())
        if not str(path) or not path.is_dir():
            raise UserError(f"adapter {path}: no such directory")
        adapter_base(path)   # a clear error for a directory that is not a PEFT adapter
        if name is not None and name in self.names:
            raise UserError(f"adapter name {name!r} is taken (loaded: {', '.join(self.names)})")
        name = name or adapter_name(path, self.names)
        with self._lock:
            try:
                if isinstance(self.model, PeftModel):
                    self.model.load_adapter(str(path), adapter_name=name)
                else:
                    self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name).eval()
            except (OSError, ValueError, KeyError, RuntimeError) as err:
                raise UserError(f"adapter {path}: cannot load it onto {self.model_path}: {err}") from None
        self.adapters[name] = path
        self.processors[name] = load_processor(self.model_path, path)
        return name

    def use(self, name: str) -> Janus:
        """Answer and draw with adapter `name` from now on (`"base"`: every adapter off)."""
        self.active = self.check(name)
        return self

    def check(self, name: str) -> str:
        if name not in self.names:
            raise UserError(f"no adapter named {name!r} is loaded (loaded: {', '.join(self.names)})")
        return name

    def processor(self, adapter: str | None = None):
        return self.processors[self.check(adapter or self.active)]

    def fmt(self, adapter: str | None = None) -> str:
        """The conversation format: as given to `load`, or detected from that name's processor."""
        return detect_format(self.processor(adapter)) if self.format in (None, "auto") else self.format

    @contextmanager
    def using(self, name: str | None = None):
        """The model with adapter `name` (default: the one in use) active, one call at a time."""
        name = self.check(name or self.active)
        with self._lock:
            if name != BASE:
                self.model.set_adapter(name)
                yield self.model
            elif self.adapters:
                with self.model.disable_adapter():
                    yield self.model
            else:
                yield self.model

    # ---- understanding and text ------------------------------------------------------------------

    def record(self, prompt: str, images=None, system: str | None = None, history=None) -> Record:
        """The record a question becomes: `images` (PIL images or paths) at the `<image>` tags, or at
        the start of the prompt when it has none; `history` (question, answer) pairs before it;
        `system=None` is Janus's default system prompt, `""` none."""
        images = [] if images is None else [images] if isinstance(images, (str, Path, Image.Image)) else list(images)
        record = prompt_record(prompt, len(images), system, history or ())
        record.images = [stored_image(im) if isinstance(im, Image.Image) else Path(im) for im in images]
        for i, path in enumerate(record.images):
            if not path.is_file():
                raise UserError(f"images[{i}] {path}: file not found")
        return record

    def chat(self, prompt: str, images=None, history=None, system: str | None = None, *, adapter: str | None = None,
             streamer=None, max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
             seed: int | None = None) -> str:
        """The answer to `prompt` (greedy unless `temperature` > 0), as `janus-ft chat` gives it."""
        return self.answer(self.record(prompt, images, system, history), adapter=adapter, streamer=streamer,
                           max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)

    def answer(self, record: Record, *, adapter: str | None = None, streamer=None, **settings) -> str:
        """The answer to a record's last question; `settings` are `infer.chat.Decoding`'s fields."""
        decoding = self.decoding(settings)
        with self.using(adapter) as model:
            return answer(model, self.processor(adapter), record, self.fmt(adapter), decoding, streamer)

    def answer_batch(self, records: list[Record], *, adapter: str | None = None, **settings) -> list[str]:
        """Answers to several records from one `generate` call (greedy: those of `answer` one by one)."""
        decoding = self.decoding(settings)
        with self.using(adapter) as model:
            return answer_batch(model, self.processor(adapter), records, self.fmt(adapter), decoding)

    @staticmethod
    def decoding(settings: dict) -> Decoding:
        unknown = set(settings) - set(Decoding.__dataclass_fields__)
        if unknown:
            raise UserError(f"unknown setting {sorted(unknown)[0]!r} (settings: {', '.join(Decoding.__dataclass_fields__)})")
        decoding = Decoding(**settings)
        if decoding.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be >= 1, got {decoding.max_new_tokens}")
        return decoding

    # ---- images ----------------------------------------------------------------------------------

    def draw(self, caption: str, n: int = 1, cfg: float = CFG_SCALE, seed: int | None = None, *, images=None,
             adapter: str | None = None, **sampling) -> list[Image.Image]:
        """`n` images for a caption -- or with `images` (PIL images or paths), `n` edits of those
        source images as the caption instructs -- as `janus-ft generate` samples and decodes them
        (`seed=None`: a seed drawn from torch's generator). `sampling`: `draw_codes`'s settings."""
        return self.decode(self.draw_codes(caption, n, cfg, seed, images=images, adapter=adapter, **sampling))

    def draw_codes(self, caption: str, n: int = 1, cfg: float = CFG_SCALE, seed: int | None = None, *, images=None,
                   adapter: str | None = None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                   image_cfg: float = 1.0, source_codes: bool | None = None) -> torch.LongTensor:
        """(n, image tokens) VQ codes sampled for a caption, or for an edit of `images` (what `draw`
        decodes). For an edit, `image_cfg` guides towards the sources (1: only the instruction's
        guidance) and `source_codes` lays the sources out as VQ codes too (None: as the adapter's run
        trained, `data.edit_source_codes` in its recipe.yaml)."""
        check_drawing(n, cfg, temperature, top_k, top_p)
        if image_cfg < 0:
            raise UserError(f"image_cfg must be >= 0, got {image_cfg}")
        seed = int(torch.randint(0, 2 ** 31 - 1, ()).item()) if seed is None else seed
        name = self.check(adapter or self.active)
        with self.using(name) as model:
            if not images:
                return sample_codes(model, self.processor(name), caption, self.fmt(name), n, cfg, temperature,
                                    seed, top_k, top_p)
            if source_codes is None:
                source_codes = adapter_source_codes(self.adapters.get(name))
            return sample_edit_codes(model, self.processor(name), caption, list(images), self.fmt(name), n, cfg,
                                     temperature, seed, top_k, top_p, image_cfg, source_codes)

    def decode(self, codes: torch.Tensor) -> list[Image.Image]:
        """VQ codes -> images (the VQ decoder is the base's: adapters never touch it)."""
        with self._lock:
            return decode_codes_to_pil(self.model, codes)
