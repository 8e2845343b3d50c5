"""The page's model: one `janus_ft.Janus` (a base with named LoRA adapters, switched per request,
one request at a time), shared by every tab, with what the page adds around it: an empty message
refused, answers streamed as they grow.

Answers and drawings are `Janus.answer` / `Janus.draw`'s, the calls `janus-ft chat` / `janus-ft
generate` make, so the page answers as the command line does.
"""

from __future__ import annotations

import threading
from dataclasses import asdict
from pathlib import Path

import torch

from ..data.records import Record
from ..errors import UserError
from ..infer.chat import Decoding
from ..infer.engine import BASE, Janus

__all__ = ["BASE", "Workbench", "out_of_memory_message"]


class Workbench:
    """The base model, its adapters by name, and a processor per name (a `Janus`)."""

    def __init__(self, model_path: str, dtype: str = "float32", fmt: str = "auto"):
        self.janus = Janus.load(model_path, dtype=dtype, format=fmt)
        self.model_path = model_path

    @property
    def model(self):
        return self.janus.model

    @property
    def names(self) -> list[str]:
        return self.janus.names

    @property
    def adapters(self) -> dict[str, Path]:
        return self.janus.adapters

    def add_adapter(self, path: str | Path) -> str:
        """Load a LoRA adapter from disk onto the base; its name is returned."""
        return self.janus.load_adapter(path)

    def check(self, name: str) -> str:
        return self.janus.check(name)

    def record(self, query: str, images: list[str], system: str | None, history=()) -> Record:
        """A chat record as `janus-ft chat --prompt --image --system` builds it."""
        if not query.strip():
            raise UserError("the message is empty: type a question")
        return self.janus.record(query, images, system, history)

    def answer(self, name: str, record: Record, decoding: Decoding, streamer=None) -> str:
        return self.janus.answer(record, adapter=name, streamer=streamer, **asdict(decoding))

    def stream(self, name: str, record: Record, decoding: Decoding):
        """The answer as it grows (text so far), then the complete answer exactly as `answer` returns it."""
        from transformers import TextIteratorStreamer

        self.check(name)
        streamer = TextIteratorStreamer(self.janus.processor(name).tokenizer, skip_prompt=True, skip_special_tokens=True)
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

    def draw(self, name: str, caption: str, n: int, cfg: float, temperature: float, seed: int, images=(),
             image_cfg: float = 1.0):
        """PIL images for a caption -- or edits of `images` as it instructs -- as `janus-ft generate`
        samples and decodes them."""
        return self.janus.draw(caption, n, cfg, seed, adapter=name, temperature=temperature, images=list(images),
                               image_cfg=image_cfg)


def out_of_memory_message(err: BaseException) -> str | None:
    """The page's message for an out-of-memory error, or None for any other error."""
    if isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower():
        return ("out of memory: try fewer images, fewer new tokens or a smaller dtype "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
    return None
