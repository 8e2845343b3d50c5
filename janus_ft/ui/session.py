"""One loaded base model with its LoRA adapters, shared by every tab of the page.

Adapters are loaded onto the one base as named PEFT adapters (`PeftModel.from_pretrained` for the
first, `load_adapter` for the others) and switched per request: `set_adapter` for an adapter,
`disable_adapter` for the base. N adapters cost N adapters' weights, not N models. A lock makes
requests that reach the model one at a time, since switching adapters changes the shared model.

Answers and drawings come from the functions `janus-ft chat` / `janus-ft generate` call
(`janus_ft.infer.chat.answer`, `janus_ft.infer.generate.sample_codes`), with the same processor
choice (the adapter's own when it saved one), so the page answers as the command line does.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path

import torch

from ..data.records import Record
from ..data.vq import decode_codes_to_pil
from ..errors import UserError
from ..infer.chat import Decoding, answer
from ..infer.generate import sample_codes
from ..infer.prompts import prompt_record, resolve_format
from ..model.loading import adapter_base, load_base, load_processor

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


class Workbench:
    """The base model, its adapters by name, and a processor per name."""

    def __init__(self, model_path: str, dtype: str = "float32", fmt: str = "auto"):
        self.model_path = model_path
        self.model = load_base(model_path, dtype)
        self.processors = {BASE: load_processor(model_path)}
        self.adapters: dict[str, Path] = {}
        self.fmt = resolve_format(self.processors[BASE], fmt)
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return [BASE, *self.adapters]

    def add_adapter(self, path: str | Path) -> str:
        """Load a LoRA adapter from disk onto the base; its name is returned. A UserError (no such
        directory, not an adapter, not for this base) leaves the loaded adapters as they were."""
        from peft import PeftModel

        path = Path(str(path).strip())
        if not str(path) or not path.is_dir():
            raise UserError(f"adapter {path}: no such directory")
        adapter_base(path)   # a clear error for a directory that is not a PEFT adapter
        name = adapter_name(path, self.names)
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

    def check(self, name: str) -> str:
        if name not in self.names:
            raise UserError(f"no adapter named {name!r} is loaded (loaded: {', '.join(self.names)})")
        return name

    @contextmanager
    def using(self, name: str):
        """The model with adapter `name` active (`base`: every adapter off), one request at a time."""
        self.check(name)
        with self._lock:
            if name != BASE:
                self.model.set_adapter(name)
                yield self.model
            elif self.adapters:
                with self.model.disable_adapter():
                    yield self.model
            else:
                yield self.model

    def record(self, query: str, images: list[str], system: str | None, history=()) -> Record:
        """A chat record as `janus-ft chat --prompt --image --system` builds it."""
        if not query.strip():
            raise UserError("the message is empty: type a question")
        record = prompt_record(query, len(images), system, history)
        record.images = [Path(p) for p in images]
        return record

    def answer(self, name: str, record: Record, decoding: Decoding, streamer=None) -> str:
        with self.using(name) as model:
            return answer(model, self.processors[name], record, self.fmt, decoding, streamer)

    def stream(self, name: str, record: Record, decoding: Decoding):
        """The answer as it grows (text so far), then the complete answer exactly as `answer` returns it."""
        from transformers import TextIteratorStreamer

        self.check(name)
        streamer = TextIteratorStreamer(self.processors[name].tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict = {}

        def work():
            try:
                result["text"] = self.answer(name, record, decoding, streamer)
            except BaseException as err:   # re-raised below, in the request's thread
                result["error"] = err
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        text = ""
        for piece in streamer:
            text += piece
            if text.strip():
                yield text.strip()
        thread.join()
        if "error" in result:
            raise result["error"]
        yield result["text"]

    def draw(self, name: str, caption: str, n: int, cfg: float, temperature: float, seed: int):
        """PIL images for a caption, as `janus-ft generate` samples and decodes them."""
        if n < 1:
            raise UserError(f"number of images must be >= 1, got {n}")
        if temperature < 0:
            raise UserError(f"temperature must be >= 0, got {temperature}")
        if temperature == 0 and n > 1:   # as `janus-ft generate` refuses it
            raise UserError("temperature 0 is greedy: every image would be the same; draw 1 image or sample")
        with self.using(name) as model:
            codes = sample_codes(model, self.processors[name], caption, self.fmt, n, cfg, temperature, seed)
            return decode_codes_to_pil(model, codes)


def out_of_memory_message(err: BaseException) -> str | None:
    """The page's message for an out-of-memory error, or None for any other error."""
    if isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower():
        return ("out of memory: try fewer images, fewer new tokens or a smaller --dtype "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
    return None
