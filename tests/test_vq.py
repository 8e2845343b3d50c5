"""janus_ft.data.vq: faithful (L2-normalised) VQ codes, generation preprocessing, the code cache."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from janus_ft.data.vq import (
    CacheKey,
    CodeCache,
    codes_for_files,
    decode_codes_to_pil,
    default_cache_dir,
    encode_images,
    find_vq_model,
    preprocess_generation_image,
    vq_fingerprint,
)
from janus_ft.tiny import CODEBOOK_SIZE, IMAGE_SIZE, build_tiny

N_TOKENS = (IMAGE_SIZE // 16) ** 2  # 64 px, VQ downsamples by 16 -> 4 x 4


@pytest.fixture(scope="session")
def model(tmp_path_factory):
    from transformers import JanusForConditionalGeneration

    path = build_tiny(tmp_path_factory.mktemp("tiny-janus"))
    return JanusForConditionalGeneration.from_pretrained(path).eval()


def _random_images(n: int, seed: int = 0, size=(80, 64)) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        arr[: size[1] // 2, :, i % 3] = 255  # some structure so latents differ beyond noise
        images.append(Image.fromarray(arr))
    return images


def _reference_codes(model, pixels: torch.Tensor) -> torch.Tensor:
    """Independent formulation: per-position argmax of cosine similarity, explicit raster loop."""
    vq = model.model.vqmodel
    with torch.no_grad():
        latents = vq.quant_conv(vq.encode(pixels).last_hidden_state)
        codebook = vq.quantize.embedding.weight
        b, _, h, w = latents.shape
        codes = torch.empty(b, h * w, dtype=torch.long)
        for i in range(b):
            for y in range(h):
                for x in range(w):
                    cos = F.cosine_similarity(latents[i, :, y, x][None, :], codebook, dim=1)
                    codes[i, y * w + x] = int(cos.argmax())
    return codes


def _pixels(images) -> torch.Tensor:
    return torch.stack([preprocess_generation_image(im, IMAGE_SIZE) for im in images])


# --- faithful quantisation ------------------------------------------------------------------------

def test_encode_images_equals_normalised_reference(model):
    images = _random_images(5)
    codes = encode_images(model, images)
    assert codes.shape == (5, N_TOKENS) and codes.dtype == torch.long and codes.device.type == "cpu"
    assert int(codes.min()) >= 0 and int(codes.max()) < CODEBOOK_SIZE
    assert torch.equal(codes, _reference_codes(model, _pixels(images)))
    # Tensor input, other batch sizes and a single (3, H, W) image give the same codes.
    assert torch.equal(encode_images(model, _pixels(images), batch_size=2), codes)
    assert torch.equal(encode_images(model, _pixels(images)[3]), codes[3:4])
    assert encode_images(model, []).shape == (0, N_TOKENS)


def _rescale_codebook_rows(vq):
    """Row norms spread over 6 orders of magnitude, directions unchanged."""
    gen = torch.Generator().manual_seed(0)
    vq.quantize.embedding.weight.mul_(10 ** (torch.rand(CODEBOOK_SIZE, 1, generator=gen) * 6 - 3))


def _shrink_latents(vq):
    """Latents 100x shorter: un-normalised search then favours the shortest codebook rows."""
    vq.quant_conv.weight.mul_(0.01)
    vq.quant_conv.bias.mul_(0.01)


@pytest.mark.parametrize("rescale", [_rescale_codebook_rows, _shrink_latents])
def test_codes_differ_from_transformers_encode_when_norms_vary(model, rescale):
    images = _random_images(8, seed=1)
    pixels = _pixels(images)
    before = encode_images(model, pixels)
    scaled = copy.deepcopy(model)
    vq = scaled.model.vqmodel
    with torch.no_grad():
        rescale(vq)
        transformers_codes = vq.encode(pixels).image_tokens.view(len(images), -1)
    ours = encode_images(scaled, pixels)
    assert (ours != transformers_codes).float().mean() > 0.6  # 88% / 99% on these weights
    assert torch.equal(ours, _reference_codes(scaled, pixels))
    # The normalised search ignores codebook-row and latent norms: same codes as before.
    assert torch.equal(ours, before)


def test_finds_vq_model_through_peft_wrapper(model):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["q_proj"]))
    assert find_vq_model(peft_model) is peft_model.get_base_model().model.vqmodel
    images = _random_images(2, seed=2)
    assert torch.equal(encode_images(peft_model, images), encode_images(model, images))


def test_wrong_image_size_is_refused(model):
    with pytest.raises(ValueError, match="image_size"):
        encode_images(model, torch.zeros(1, 3, 2 * IMAGE_SIZE, 2 * IMAGE_SIZE))


# --- preprocessing --------------------------------------------------------------------------------

def _banded(width: int, height: int, vertical: bool) -> Image.Image:
    """Green image whose two ends (left/right, or top/bottom) are red and blue bands of 12%."""
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    arr[...] = (0, 255, 0)
    long = height if vertical else width
    band = int(long * 0.12)
    ends = (np.s_[:band, :], np.s_[-band:, :]) if vertical else (np.s_[:, :band], np.s_[:, -band:])
    arr[ends[0]], arr[ends[1]] = (255, 0, 0), (0, 0, 255)
    return Image.fromarray(arr)


@pytest.mark.parametrize("width,height,vertical", [(150, 100, False), (100, 150, True),
                                                   (48, 32, False), (640, 64, False)])
def test_short_side_resize_and_centre_crop(width, height, vertical):
    out = preprocess_generation_image(_banded(width, height, vertical), IMAGE_SIZE)
    assert out.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and out.dtype == torch.float32
    # Only the green middle survives: the red/blue ends lie outside the centre crop.
    green = torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1)
    assert (out - green).abs().max() < 0.05


def test_crop_is_centred():
    arr = np.zeros((64, 192, 3), dtype=np.uint8)
    arr[:, 64:128] = 255  # white middle third of a 3:1 image = exactly the centre crop
    out = preprocess_generation_image(Image.fromarray(arr), 64)
    assert torch.equal(out[:, :, 2:-2], torch.ones(3, 64, 60))


def test_range_is_exactly_minus_one_to_one():
    black = preprocess_generation_image(Image.new("RGB", (70, 90), (0, 0, 0)), IMAGE_SIZE)
    white = preprocess_generation_image(Image.new("RGB", (90, 70), (255, 255, 255)), IMAGE_SIZE)
    assert torch.equal(black, torch.full_like(black, -1.0))
    assert torch.equal(white, torch.full_like(white, 1.0))


def _rgb255(image: Image.Image) -> tuple[int, ...]:
    out = preprocess_generation_image(image, 8)
    return tuple(int(v) for v in torch.round((out[:, 4, 4] + 1) * 127.5))


def test_modes_alpha_on_white_palette_grey_cmyk_16bit():
    assert _rgb255(Image.new("RGBA", (10, 10), (255, 0, 0, 0))) == (255, 255, 255)
    assert _rgb255(Image.new("RGBA", (10, 10), (255, 0, 0, 255))) == (255, 0, 0)
    half = _rgb255(Image.new("RGBA", (10, 10), (0, 0, 0, 128)))
    assert all(abs(v - 127) <= 1 for v in half)
    assert _rgb255(Image.new("LA", (10, 10), (0, 0))) == (255, 255, 255)
    palette = Image.new("P", (10, 10), 0)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    assert _rgb255(palette) == (0, 0, 0)
    palette.info["transparency"] = 0
    assert _rgb255(palette) == (255, 255, 255)
    assert _rgb255(Image.new("L", (10, 10), 77)) == (77, 77, 77)
    assert _rgb255(Image.new("CMYK", (10, 10), (0, 0, 0, 0))) == (255, 255, 255)
    assert _rgb255(Image.new("CMYK", (10, 10), (0, 0, 0, 255))) == (0, 0, 0)
    sixteen = Image.fromarray(np.full((10, 10), 32896, dtype=np.uint16))  # 128 * 257
    assert sixteen.mode.startswith("I") and _rgb255(sixteen) == (128, 128, 128)
    assert _rgb255(Image.new("1", (10, 10), 1)) == (255, 255, 255)


# --- decoding -------------------------------------------------------------------------------------

def test_decode_codes_to_pil(model):
    codes = encode_images(model, _random_images(3, seed=3))
    images = decode_codes_to_pil(model, codes)
    assert len(images) == 3
    assert all(im.mode == "RGB" and im.size == (IMAGE_SIZE, IMAGE_SIZE) for im in images)
    # uint8 mapping = clip((x + 1) / 2 * 255) truncated, from the model's own decoder output.
    with torch.no_grad():
        raw = model.decode_image_tokens(codes)[0].numpy()
    expected = np.clip((raw + 1) / 2 * 255, 0, 255).astype(np.uint8)
    assert np.array_equal(np.asarray(images[0]), expected)


# --- the code cache -------------------------------------------------------------------------------

@pytest.fixture
def image_files(tmp_path):
    paths = []
    for i, image in enumerate(_random_images(5, seed=4, size=(96, 72))):
        paths.append(tmp_path / f"img{i}.png")
        image.save(paths[-1])
    return paths


class EncoderCounter:
    """Counts images run through a VQ encoder by wrapping that module instance's forward."""

    def __init__(self, monkeypatch, model):
        self.images = 0
        encoder = find_vq_model(model).encoder
        original = encoder.forward

        def counting(pixel_values):
            self.images += pixel_values.shape[0]
            return original(pixel_values)

        monkeypatch.setattr(encoder, "forward", counting)


def test_second_call_runs_no_encoder(model, image_files, tmp_path, monkeypatch):
    counter = EncoderCounter(monkeypatch, model)
    first = CodeCache(tmp_path / "cache")
    codes = codes_for_files(model, image_files, first, batch_size=2)
    assert first.stats() == {"hits": 0, "misses": 5, "encoder_passes": 5} and counter.images == 5
    assert torch.equal(codes, encode_images(model, [Image.open(p) for p in image_files]))
    counter.images = 0

    second = CodeCache(tmp_path / "cache")  # a new process would start like this
    again = codes_for_files(model, image_files, second)
    assert second.stats() == {"hits": 5, "misses": 0, "encoder_passes": 0} and counter.images == 0
    assert torch.equal(again, codes)
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_duplicate_files_are_encoded_once(model, image_files, tmp_path):
    cache = CodeCache(tmp_path / "cache")
    paths = [image_files[0], image_files[1], image_files[0]]
    codes = codes_for_files(model, paths, cache)
    assert cache.encoder_passes == 2 and cache.misses == 3 and torch.equal(codes[0], codes[2])


def test_changed_vq_weights_change_the_key(model, image_files, tmp_path):
    cache = CodeCache(tmp_path / "cache")
    codes_for_files(model, image_files, cache)
    other = copy.deepcopy(model)
    fingerprint = vq_fingerprint(other)
    assert fingerprint == vq_fingerprint(model)
    with torch.no_grad():  # edited in place: the memoised fingerprint must notice
        other.model.vqmodel.quant_conv.bias.add_(0.5)
    assert vq_fingerprint(other) != fingerprint
    fresh = CodeCache(tmp_path / "cache")
    codes_for_files(other, image_files, fresh)
    assert fresh.stats() == {"hits": 0, "misses": 5, "encoder_passes": 5}


def test_changed_image_bytes_change_the_key(model, image_files, tmp_path):
    codes_for_files(model, image_files, CodeCache(tmp_path / "cache"))
    arr = np.asarray(Image.open(image_files[2])).copy()
    arr[0, 0] ^= 1
    Image.fromarray(arr).save(image_files[2])
    cache = CodeCache(tmp_path / "cache")
    codes_for_files(model, image_files, cache)
    assert cache.stats() == {"hits": 4, "misses": 1, "encoder_passes": 1}


def test_image_size_is_part_of_the_key(tmp_path):
    cache = CodeCache(tmp_path)
    small, large = CacheKey("a" * 64, "f" * 64, 64), CacheKey("a" * 64, "f" * 64, 384)
    assert cache.path(small) != cache.path(large)
    cache.put(small, torch.arange(16))
    assert torch.equal(cache.get(small), torch.arange(16))
    assert cache.get(large) is None


@pytest.mark.parametrize("garbage", [b"", b"not a numpy file", "truncate"])
def test_corrupt_cache_file_is_a_miss(model, image_files, tmp_path, garbage):
    cache_dir = tmp_path / "cache"
    codes = codes_for_files(model, image_files[:2], CodeCache(cache_dir))
    victim = sorted(cache_dir.rglob("*.npy"))[0]
    garbage = victim.read_bytes()[:-10] if garbage == "truncate" else garbage
    victim.write_bytes(garbage)
    cache = CodeCache(cache_dir)
    again = codes_for_files(model, image_files[:2], cache)
    assert cache.stats() == {"hits": 1, "misses": 1, "encoder_passes": 1}
    assert torch.equal(again, codes)
    assert len(list(cache_dir.rglob("*.npy"))) == 2  # the bad entry was rewritten


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("JANUS_FT_CACHE", str(tmp_path))
    assert default_cache_dir() == CodeCache().root == tmp_path / "vq_codes"
    monkeypatch.delenv("JANUS_FT_CACHE")
    assert default_cache_dir().parts[-3:] == (".cache", "janus_ft", "vq_codes")


def test_unreadable_image_is_a_user_error(model, tmp_path):
    from janus_ft.errors import UserError

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(UserError, match="bad.png"):
        codes_for_files(model, [bad], CodeCache(tmp_path / "cache"))
    with pytest.raises(UserError, match="missing.png"):
        codes_for_files(model, [tmp_path / "missing.png"], CodeCache(tmp_path / "cache"))
