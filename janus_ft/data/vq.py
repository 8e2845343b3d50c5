"""Image -> VQ codes for the generation path: preprocessing, faithful quantisation, a disk cache.

Generation targets are the codes of Janus's frozen VQ-16 tokenizer (docs/janus.md, the generation path).
Two facts drive this module:

- DeepSeek's quantizer (`codebook_l2_norm=True`) L2-normalises both the latent vectors and the
  codebook before the nearest-neighbour search. transformers' `JanusVQVAE.encode()` searches the raw
  vectors (only its decoder normalises), so its codes are not the ones Janus was trained on. We run
  the VQ encoder + `quant_conv` ourselves and do the normalised search here.
- Encoding is a full conv-net pass per image: codes are cached on disk, keyed by the image bytes,
  the VQ weights and the image size, so each image is encoded once rather than every epoch.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ..errors import UserError
from ..files import cache_root, hold, publish
from .images import UnreadableImage, check_file, decode, to_rgb

_SEARCH_ROWS = 4096  # latent vectors per distance matrix: 4096 x 16384 floats = 256 MiB at most


def preprocess_generation_image(image: Image.Image, size: int) -> torch.FloatTensor:
    """Generation-target preprocessing: RGB, short side -> `size` (bicubic), centre crop, [-1, 1].

    Unlike the understanding path (pad to square with grey), the generation path crops: the VQ codes
    must describe a full `size` x `size` picture with no padding. Returns a (3, size, size) tensor.
    """
    image = to_rgb(ImageOps.exif_transpose(image))
    w, h = image.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())
    # x / 127.5 - 1 maps 0 -> -1 and 255 -> 1 exactly (both are representable in float32).
    return (pixels / 127.5 - 1.0).permute(2, 0, 1).contiguous()


def find_vq_model(model) -> torch.nn.Module:
    """The `JanusVQVAE` of a `JanusForConditionalGeneration`, of a PEFT wrapper of one, or itself."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for candidate in (getattr(getattr(base, "model", None), "vqmodel", None),
                      getattr(base, "vqmodel", None), base):
        if hasattr(candidate, "quantize") and hasattr(candidate, "encoder"):
            return candidate
    raise TypeError(f"no Janus VQ model found in {type(model).__name__} (expected .model.vqmodel)")


def generation_image_size(model) -> int:
    """Generation-target pixel size: the vision image size (its VQ grid = the image tokens)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return int(base.config.vision_config.image_size)


def _num_tokens(vq) -> int:
    rows, cols = vq.quantize.quant_state_dims
    return rows * cols


def normalised_nearest_codes(latents: torch.Tensor, codebook: torch.Tensor) -> torch.LongTensor:
    """DeepSeek's quantizer: L2-normalise latents (b, c, h, w) and codebook (n, c), argmin L2.

    Returns (b, h * w) codes in raster order (row-major over the h x w grid). The search runs in
    float32: in bfloat16 many of the 16384 distances tie and argmin would pick arbitrary codes.
    It is the codebook normalisation that changes the answer (vs transformers' `encode`); once the
    codebook is unit-norm, scaling a latent no longer moves its argmin (the tests pin both).
    """
    b, c, h, w = latents.shape
    z = F.normalize(latents.permute(0, 2, 3, 1).reshape(-1, c).float(), p=2, dim=-1)
    e = F.normalize(codebook.float(), p=2, dim=-1)
    e_sq = (e ** 2).sum(dim=1)
    codes = []
    for rows in z.split(_SEARCH_ROWS):
        # |z - e|^2 expanded as the original does; on unit vectors it is 2 - 2 cos(z, e).
        dist = (rows ** 2).sum(dim=1, keepdim=True) + e_sq - 2.0 * rows @ e.T
        codes.append(dist.argmin(dim=1))
    return torch.cat(codes).view(b, h * w)


@torch.no_grad()
def _encode_batch(vq, pixels: torch.Tensor) -> torch.LongTensor:
    param = next(vq.parameters())
    was_training = vq.training
    vq.eval()  # the VQ model is frozen; a trainer's model.train() must not make codes stochastic
    try:
        latents = vq.quant_conv(vq.encoder(pixels.to(param.device, param.dtype)))
    finally:
        vq.train(was_training)
    if latents.shape[2] * latents.shape[3] != _num_tokens(vq):
        raise ValueError(f"VQ grid {tuple(latents.shape[2:])} != {vq.quantize.quant_state_dims}: "
                         "images must be the model's vision_config.image_size")
    return normalised_nearest_codes(latents, vq.quantize.embedding.weight).cpu()


def encode_images(model, images, batch_size: int = 16) -> torch.LongTensor:
    """Faithful VQ codes (n, num_image_tokens) for PIL images or a preprocessed (n, 3, H, W) batch.

    PIL images are preprocessed with `preprocess_generation_image` at the model's image size.
    Codes are long, on CPU, in raster order.
    """
    vq = find_vq_model(model)
    if isinstance(images, torch.Tensor):
        pixels = list((images.unsqueeze(0) if images.dim() == 3 else images).split(batch_size))
    else:
        size = generation_image_size(model)
        images = list(images)
        batches = (images[i:i + batch_size] for i in range(0, len(images), batch_size))
        pixels = [torch.stack([preprocess_generation_image(im, size) for im in batch])
                  for batch in batches]
    chunks = [_encode_batch(vq, chunk) for chunk in pixels if len(chunk)]
    return torch.cat(chunks) if chunks else torch.empty(0, _num_tokens(vq), dtype=torch.long)


@torch.no_grad()
def decode_codes_to_pil(model, codes: torch.Tensor) -> list[Image.Image]:
    """VQ codes (n, num_image_tokens) -> RGB images, mapped to uint8 as the original Janus does."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    vq = find_vq_model(model)
    codes = torch.as_tensor(codes, dtype=torch.long).to(next(vq.parameters()).device)
    decoded = base.decode_image_tokens(codes).float().cpu().numpy()  # (n, H, W, 3) in [-1, 1]
    # Truncating cast after clipping, like DeepSeek's `generate` script.
    pixels = np.clip((decoded + 1) / 2 * 255, 0, 255).astype(np.uint8)
    return [Image.fromarray(p) for p in pixels]


# --- the code cache -------------------------------------------------------------------------------

_FINGERPRINTS: weakref.WeakKeyDictionary[torch.nn.Module, tuple] = weakref.WeakKeyDictionary()


def vq_fingerprint(model) -> str:
    """sha256 of the VQ weights (names, dtypes, shapes, bytes); memoised per model.

    The memo is checked against each tensor's storage pointer and in-place version counter, so
    weights loaded or edited in place get a new fingerprint instead of serving stale codes.
    """
    vq = find_vq_model(model)
    state = vq.state_dict(keep_vars=True)
    token = tuple((name, t.data_ptr(), t._version) for name, t in sorted(state.items()))
    memo = _FINGERPRINTS.get(vq)
    if memo is not None and memo[0] == token:
        return memo[1]
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    _FINGERPRINTS[vq] = (token, digest.hexdigest())
    return digest.hexdigest()


class CacheKey(NamedTuple):
    image_sha256: str
    vq_fingerprint: str
    image_size: int


def default_cache_dir() -> Path:
    """`$JANUS_FT_CACHE/vq_codes`, else `~/.cache/janus_ft/vq_codes`."""
    return cache_root() / "vq_codes"


class CodeCache:
    """VQ codes on disk, one `.npy` per (image bytes, VQ weights, image size).

    Writes go to a temporary file then `os.replace`, so concurrent processes never see half a file;
    an unreadable or malformed entry is a miss. `hits`, `misses` and `encoder_passes` accumulate
    over `codes_for_files` calls.
    """

    def __init__(self, cache_dir: str | Path | None = None):
        self.root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.hits = self.misses = self.encoder_passes = 0

    def entry(self, vq_fingerprint: str, image_size: int) -> Path:
        """The directory of one VQ model's codes at one image size (what `janus-ft cache` lists)."""
        return self.root / f"{vq_fingerprint[:24]}-{image_size}"

    def path(self, key: CacheKey) -> Path:
        sha = key.image_sha256
        return self.entry(key.vq_fingerprint, key.image_size) / sha[:2] / f"{sha}.npy"

    def get(self, key: CacheKey) -> torch.LongTensor | None:
        try:
            codes = np.load(self.path(key), allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None  # absent, truncated or garbage: encode again
        if codes.ndim != 1 or codes.dtype.kind not in "iu":
            return None
        return torch.from_numpy(codes.astype(np.int64))

    def put(self, key: CacheKey, codes: torch.Tensor) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem[:16]}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                # int32 covers any codebook; 576 codes take 2.4 KB per image.
                np.save(f, codes.detach().cpu().numpy().astype(np.int32).reshape(-1))
            publish(Path(tmp), target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "encoder_passes": self.encoder_passes}


def _read_image_bytes(path: Path) -> bytes:
    try:
        check_file(path)
        return path.read_bytes()
    except UnreadableImage as err:
        raise UserError(f"{path}: {err}") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read image ({err.strerror or err})") from None


def _decode_image(path: Path, data: bytes) -> Image.Image:
    """The same checks as the understanding path (`images.decode`): bombs, truncation, non-images."""
    try:
        return decode(io.BytesIO(data))
    except UnreadableImage as err:
        raise UserError(f"{path}: {err}") from None


def codes_for_files(model, paths: Sequence[str | Path], cache: CodeCache | None = None,
                    batch_size: int = 16) -> torch.LongTensor:
    """Codes (n, num_image_tokens) for image files, encoding only cache misses, in full batches.

    Identical files (same bytes) within one call are encoded once. Updates the cache's counters.
    """
    cache = cache if cache is not None else CodeCache()
    vq = find_vq_model(model)
    fingerprint, size = vq_fingerprint(model), generation_image_size(model)
    hold(cache.entry(fingerprint, size), create=True)   # in use: `janus-ft cache prune` leaves it
    n_tokens = _num_tokens(vq)
    out = torch.empty(len(paths), n_tokens, dtype=torch.long)
    pending: dict[CacheKey, tuple[torch.Tensor, list[int]]] = {}  # key -> (pixels, output rows)

    def flush() -> None:
        keys = list(pending)
        pixels = torch.stack([pending[k][0] for k in keys])
        codes = encode_images(model, pixels, batch_size=batch_size)
        cache.encoder_passes += len(keys)
        for key, row in zip(keys, codes):
            cache.put(key, row)
            out[pending[key][1]] = row
        pending.clear()

    for i, path in enumerate(map(Path, paths)):
        data = _read_image_bytes(path)
        key = CacheKey(hashlib.sha256(data).hexdigest(), fingerprint, size)
        cached = cache.get(key)
        if cached is not None and cached.numel() == n_tokens:
            cache.hits += 1
            out[i] = cached
            continue
        cache.misses += 1
        if key in pending:
            pending[key][1].append(i)
            continue
        pending[key] = (preprocess_generation_image(_decode_image(path, data), size), [i])
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    return out


@contextlib.contextmanager
def vq_on_accelerator(model):
    """The model is still on the CPU while datasets are built (the Trainer places it later); the
    VQ encoder alone (72M parameters in Janus-Pro) goes to this rank's GPU for the cache misses,
    seconds instead of minutes for a few thousand 384-px targets, and comes back afterwards."""
    from accelerate import PartialState

    vq = find_vq_model(model)
    home = next(vq.parameters()).device
    if not torch.cuda.is_available() or home.type != "cpu":
        yield
        return
    vq.to(PartialState().device)
    try:
        yield
    finally:
        vq.to(home)
