"""In-memory data from Python (`janus_ft.sft(..., train_dataset=...)`) as a data source like any other.

TRL's trainers take a `datasets.Dataset`; janus_ft's data path -- validation with file:line errors,
the prepared-rows cache, the VQ code cache, every rank reading the main process's files -- reads
sources by path. So in-memory data is written once under the cache and read back from there: a
`datasets.Dataset` as a saved dataset (keyed by its fingerprint), a list of records as JSONL (keyed
by its content), relative image paths resolved against the working directory and PIL images saved
beside it. The run's saved `recipe.yaml` then names that copy, so a resume reads the same data.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

from ..errors import UserError
from ..files import cache_root, publish

IMAGE_FIELDS = ("images", "image", "rejected_images")


def materialise(data, what: str = "train_dataset") -> str:
    """The path of a data source holding `data` (a `datasets.Dataset` or a list of record dicts)."""
    import datasets

    if isinstance(data, datasets.Dataset):
        return str(_publish(f"dataset-{data._fingerprint}", lambda staged: data.save_to_disk(str(staged))))
    if isinstance(data, (list, tuple)) and all(isinstance(r, dict) for r in data):
        lines, images = _records(data, what)
        key = hashlib.sha256("\n".join(lines).encode() + b"".join(images.values())).hexdigest()[:40]
        return str(_publish(f"records-{key}", lambda staged: _write_records(staged, lines, images)) / "data.jsonl")
    raise UserError(f"{what}: expected a datasets.Dataset or a list of records (dicts), got {type(data).__name__}")


def _publish(name: str, write) -> Path:
    final = cache_root() / "inline" / name
    if not final.exists():
        staged = final.with_name(f".{name}-{os.getpid()}")
        staged.mkdir(parents=True, exist_ok=True)
        write(staged)
        publish(staged, final, keep_existing=True)   # another rank or run wrote the same content: keep one
    return final


def _records(records, what: str) -> tuple[list[str], dict[str, bytes]]:
    """JSON lines of the records with their images as files: PIL images become PNG files (name ->
    bytes), relative paths absolute (they were relative to the working directory)."""
    lines, images = [], {}
    for i, record in enumerate(records):
        out = dict(record)
        for name in IMAGE_FIELDS:
            if name in out:
                value = out[name]
                out[name] = [_image(v, images, f"{what}[{i}].{name}") for v in value] if isinstance(value, list) \
                    else _image(value, images, f"{what}[{i}].{name}")
        try:
            lines.append(json.dumps(out, ensure_ascii=False, sort_keys=True))
        except TypeError as err:
            raise UserError(f"{what}[{i}]: a record must hold text, numbers, lists, image paths or PIL images: {err}") from None
    return lines, images


def _image(value, images: dict, where: str):
    from PIL import Image

    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        data = buffer.getvalue()
        name = f"{hashlib.sha256(data).hexdigest()[:32]}.png"
        images[name] = data
        return name
    if isinstance(value, (str, os.PathLike)):
        return str(Path(value).expanduser().resolve())
    raise UserError(f"{where}: an image is a file path or a PIL image, got {type(value).__name__}")


def _write_records(staged: Path, lines: list[str], images: dict[str, bytes]) -> None:
    for name, data in images.items():
        (staged / name).write_bytes(data)
    (staged / "data.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
