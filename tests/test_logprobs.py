"""Target log-probabilities: the SFT loss with the sign flipped, per token and per row, on every
task; independent of which other rows share the batch."""

import pytest
import torch
from PIL import Image

from janus_ft.data.collate import collate
from janus_ft.data.dataset import JanusDataset
from janus_ft.data.records import parse_record
from janus_ft.model.logprobs import target_logps
from janus_ft.model.loss import compute_loss_parts


@pytest.fixture()
def samples(tmp_path, tiny_processor):
    for i, size in enumerate([(30, 64), (64, 64)]):
        Image.new("RGB", size, (90 * i, 200 - 50 * i, 90)).save(tmp_path / f"{i}.png")
    objs = [{"query": "<image>What colour is the shape?", "response": "red", "images": ["0.png"]},
            {"query": "What is 7 + 7?", "response": "fourteen, I think"},
            {"query": "a red circle", "response": "<image>", "images": ["1.png"]}]
    records = [parse_record(o, tmp_path / "d.jsonl", i + 1) for i, o in enumerate(objs)]
    codes = {str(tmp_path / "1.png"): [(7 * i) % 256 for i in range(tiny_processor.num_image_tokens)]}
    ds = JanusDataset(records, tiny_processor, "janus-pro", codes=codes)
    return [ds[i] for i in range(len(ds))]


def test_logps_are_minus_the_sft_token_losses(tiny_model, samples, tiny_processor):
    pad = tiny_processor.tokenizer.pad_token_id
    batch = collate(samples, pad)
    with torch.no_grad():
        lp = target_logps(tiny_model, batch)
        parts = compute_loss_parts(tiny_model, batch)
        alone = [compute_loss_parts(tiny_model, collate([s], pad)) for s in samples]
    # the mean over all targets is minus the SFT loss; each row's sum is minus that sample's loss
    assert float(lp.tokens[lp.mask].mean()) == pytest.approx(-float(parts.total) / parts.n_tokens, rel=1e-6)
    assert lp.sums.tolist() == pytest.approx([-float(a.total) for a in alone], rel=1e-5)
    assert lp.counts.tolist() == [a.n_tokens for a in alone]
    # targets are the labels shifted as transformers does (column 0 never), the first image code included
    want = batch["labels"] != -100
    want[:, 0] = False
    assert torch.equal(lp.mask, want)
    assert int(lp.counts[2]) == tiny_processor.num_image_tokens
    assert (lp.tokens[~lp.mask] == 0).all() and (lp.tokens[lp.mask] < 0).all()


def test_logps_carry_gradient(tiny_model, samples, tiny_processor):
    batch = collate(samples, tiny_processor.tokenizer.pad_token_id)
    lp = target_logps(tiny_model, batch)
    lp.sums.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_model.model.generation_head.parameters())
    assert tiny_model.lm_head.weight.grad.abs().sum() > 0
