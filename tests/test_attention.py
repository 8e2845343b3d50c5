"""Per-sample attention for packed rows (`janus_ft.model.attention`): with it, the token losses and
LoRA gradients of packed SFT, DPO-pair and GRPO-completion batches (understanding features in their
placeholders, generation codes) equal those of SDPA's block-diagonal mask; no mask is built; the
vision tower keeps SDPA; padded batches and generation with a cache keep their masks."""

import pytest
import torch
from PIL import Image
from test_loss import MIXED_RECORDS

from janus_ft.data.collate import collate, loss_plan, pack
from janus_ft.data.dataset import JanusDataset
from janus_ft.data.preference import PairDataset, parse_pair
from janus_ft.data.records import parse_record
from janus_ft.infer.prompts import prompt_record, record_inputs
from janus_ft.infer.rollout import Rollout, completion_samples
from janus_ft.janus import SpecialIds
from janus_ft.model import attention
from janus_ft.model.attention import PER_SAMPLE, bounds_from_positions, set_packed_attention
from janus_ft.model.logprobs import target_logps
from janus_ft.model.loss import compute_loss_parts, core_model, target_losses


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for i, colour in enumerate([(200, 30, 30), (30, 60, 220), (30, 170, 60)]):
        Image.new("RGB", (64, 48 + 8 * i), colour).save(root / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def model(tiny_dir):
    """The tiny Janus with random non-zero LoRA on the LLM, the aligner and both generation
    modules (a fresh adapter has B = 0, and no gradient would reach A). At std 0.1 float32 rounding
    alone moves every path's gradients (SDPA's mask, eager, padded rows, per-sample) by 2-4e-6 of
    their largest value from float64's; at 0.3 by 4e-5, which no float32 comparison at 1e-5 survives."""
    from peft import LoraConfig, get_peft_model
    from transformers import JanusForConditionalGeneration

    from janus_ft.model.lora import target_regex

    base = JanusForConditionalGeneration.from_pretrained(tiny_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=target_regex(
        base, ["llm", "aligner", "gen_head", "gen_aligner"])))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.1)
    return peft_model.train()   # dropout-free LoRA (lora_dropout 0): train mode is deterministic


def codes(processor, i):
    return [(7 * i + 3 * j) % 256 for j in range(processor.num_image_tokens)]


def sft_batch(images, processor):
    objs = MIXED_RECORDS
    records = [parse_record(o, images / "d.jsonl", i + 1) for i, o in enumerate(objs)]
    ds = JanusDataset(records, processor, "janus-pro", codes={str(images / "2.png"): codes(processor, 2)})
    return [ds[i] for i in range(len(ds))]


def dpo_rows(images, processor):
    """Pair samples as `PairCollator` lays them out: every chosen side, then every rejected side."""
    rows = [{"prompt": "<image>What colour is it?", "chosen": "red", "rejected": "blue", "images": ["0.png"]},
            {"prompt": "Which is a colour: red or circle?", "chosen": "red", "rejected": "circle"},
            {"query": "a red square", "response": "<image>", "images": ["0.png"], "rejected_images": ["1.png"]}]
    cache = {str(images / f"{i}.png"): codes(processor, i) for i in range(3)}
    pairs = [PairDataset([parse_pair(r, images / "d.jsonl", i + 1)], processor, "janus-pro", codes=cache).sample(0)
             for i, r in enumerate(rows)]
    return [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]


def grpo_rows(images, processor):
    """Completion samples as `completion_batch` lays them out: a group of text answers of different
    lengths, a group of answers to an image question, a group of images (N codes each)."""
    special = SpecialIds.from_tokenizer(processor.tokenizer)
    tok = processor.tokenizer
    text = record_inputs(processor, prompt_record("What is 1 + 5?"), "janus-pro")["input_ids"][0].tolist()
    seen = record_inputs(processor, prompt_record("<image>What colour?", 1), "janus-pro")
    seen_record = parse_record({"query": "<image>What colour?", "response": "x", "images": ["1.png"]},
                               images / "d.jsonl", 1)
    pixels = JanusDataset([seen_record], processor, "janus-pro")[0]["pixel_values"]
    draw = record_inputs(processor, prompt_record("a red fox"), "janus-pro")["input_ids"][0].tolist()
    answers = [tok.encode(a, add_special_tokens=False) + [tok.eos_token_id] for a in ("six", "6", "it is six")]
    rollouts = [Rollout("text", text, answers, [False] * 3),
                Rollout("understanding", seen["input_ids"][0].tolist(), answers[:2], [False] * 2, pixels),
                Rollout("generation", draw + [special.boi], [codes(processor, 0), codes(processor, 1)], [False] * 2)]
    return [s for r in rollouts for s in completion_samples(r, special)]


BATCHES = {"sft": sft_batch, "dpo": dpo_rows, "grpo": grpo_rows}


def use(model, implementation: str) -> None:
    core_model(model).set_attn_implementation({"text_config": implementation})


def losses_and_grads(model, batch: dict, kind: str):
    """Token losses (SFT: `target_losses`, what `compute_loss_parts` sums) or target log-probabilities
    (DPO, GRPO: `target_logps`, their path), and the LoRA gradients of their sum."""
    model.zero_grad(set_to_none=True)
    if kind == "sft":
        _, values = target_losses(model, batch)
        total = values.sum()
    else:
        lp = target_logps(model, batch)
        values, total = lp.tokens[lp.mask], lp.sums.sum()
    total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return values.detach(), grads


def assert_equal(got: torch.Tensor, want: torch.Tensor, name: str = "", tol: float = 1e-5) -> None:
    """Equal to `tol` of the tensor's largest value (gradients are sums of many terms: an element
    near zero carries the rounding of the large ones it cancelled)."""
    scale = want.abs().max()
    assert (got - want).abs().max() <= tol * scale, (name, float((got - want).abs().max() / scale))


@pytest.fixture()
def segments(monkeypatch):
    """Counts the per-sample SDPA calls (one per layer per forward on this CPU route)."""
    calls = []
    original = attention._per_segment

    def counted(*args):
        calls.append(args[3].tolist())
        return original(*args)

    monkeypatch.setattr(attention, "_per_segment", counted)
    return calls


@pytest.mark.parametrize("kind", list(BATCHES))
def test_per_sample_attention_equals_the_mask(model, tiny_processor, images, kind, segments):
    rows = BATCHES[kind](images, tiny_processor)
    batch = pack(rows)
    batch["loss_plan"] = loss_plan(batch, core_model(model).config.image_token_id)
    assert batch["input_ids"].shape[0] == 1 and len(batch["cu_seq_lens"]) == len(rows) + 1
    if kind != "dpo":   # images on both paths are in the batch
        assert "pixel_values" in batch and len(batch["loss_plan"]["gen_targets"]) > 0

    use(model, "sdpa")
    masked, masked_grads = losses_and_grads(model, batch, kind)
    assert segments == []
    assert set_packed_attention(model, packing=True) == PER_SAMPLE
    try:
        per_sample, grads = losses_and_grads(model, batch, kind)
        n_layers = core_model(model).config.text_config.num_hidden_layers
        assert segments == [batch["cu_seq_lens"].tolist()] * n_layers   # forward only: backward reuses it
        assert_equal(per_sample, masked)
        assert grads.keys() == masked_grads.keys()
        assert any("language_model" in n and "lora_A" in n for n in grads)
        for name in grads:
            assert_equal(grads[name], masked_grads[name], name)
        # the bounds matter: one segment over the whole row is attention across samples
        across = dict(batch, cu_seq_lens=batch["cu_seq_lens"][[0, -1]], max_length=batch["input_ids"].shape[1])
        wrong, _ = losses_and_grads(model, across, kind)
        assert (wrong - masked).abs().max() > 1e-3
    finally:
        use(model, "sdpa")


def test_packed_rows_without_bounds_find_them_from_position_ids(model, tiny_processor, images, segments):
    batch = pack(sft_batch(images, tiny_processor))
    bare = {k: v for k, v in batch.items() if k not in ("cu_seq_lens", "max_length")}
    use(model, "sdpa")
    with torch.no_grad():
        masked = compute_loss_parts(model, bare).task_sums
    set_packed_attention(model, packing=True)
    try:
        with torch.no_grad():
            found = compute_loss_parts(model, bare).task_sums
        assert segments and segments[0] == batch["cu_seq_lens"].tolist()
        assert_equal(found, masked)
    finally:
        use(model, "sdpa")


def test_no_mask_is_built_for_packed_rows_and_padded_rows_keep_theirs(model, tiny_processor, images, segments,
                                                                      monkeypatch):
    import transformers.masking_utils as masking

    built, sdpa_mask = [], masking.sdpa_mask
    monkeypatch.setattr(masking, "sdpa_mask", lambda *a, **k: built.append(k["attention_mask"]) or sdpa_mask(*a, **k))
    samples = sft_batch(images, tiny_processor)
    padded = collate(samples, tiny_processor.tokenizer.pad_token_id)
    use(model, "sdpa")
    with torch.no_grad():
        want = compute_loss_parts(model, padded).task_sums
    set_packed_attention(model, packing=True)
    try:
        with torch.no_grad():
            compute_loss_parts(model, pack(samples))
            assert built == [] and len(segments) == 2
            got = compute_loss_parts(model, padded).task_sums
        assert len(built) == 1 and built[0].shape == padded["attention_mask"].shape   # the padding mask, once
        assert len(segments) == 2   # padded rows run transformers' SDPA
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    finally:
        use(model, "sdpa")


def test_left_padded_generation_with_a_cache_is_unchanged(tiny_model, tiny_processor):
    tok = tiny_processor.tokenizer
    inputs = tok(["What is 1 + 5?", "Describe a red circle in one short sentence, please."], padding=True,
                 return_tensors="pt")
    assert (inputs["attention_mask"] == 0).any()   # left padding the mask must keep out

    def greedy():
        return tiny_model.generate(**inputs, max_new_tokens=6, do_sample=False, max_length=None,
                                   pad_token_id=tok.pad_token_id)

    want = greedy()
    set_packed_attention(tiny_model, packing=True)
    assert greedy().tolist() == want.tolist()


def test_only_the_language_model_changes_and_only_when_rows_are_packed(tiny_model):
    config = tiny_model.config
    assert set_packed_attention(tiny_model, packing=False) == "sdpa"
    assert set_packed_attention(tiny_model, packing=True, mode="mask") == "sdpa"
    assert set_packed_attention(tiny_model, packing=True, mode="per_sample") == PER_SAMPLE
    assert config.text_config._attn_implementation == PER_SAMPLE
    assert tiny_model.model.language_model.layers[0].self_attn.config._attn_implementation == PER_SAMPLE
    assert config.vision_config._attn_implementation == "sdpa"
    assert tiny_model.model.vision_model.config._attn_implementation == "sdpa"
    assert PER_SAMPLE not in config.to_json_string()   # a saved config names no janus_ft function


def test_bounds_from_positions_split_rows_and_restarts():
    cu, longest = bounds_from_positions(torch.tensor([[0, 1, 0, 1, 2], [0, 1, 2, 3, 0]]))
    assert cu.tolist() == [0, 2, 5, 9, 10] and cu.dtype == torch.int32 and longest == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the varlen kernels run on CUDA only")
@pytest.mark.parametrize("kernel", ["torch_varlen", "flash_attn"])
def test_varlen_kernels_equal_sdpa_per_sample_on_a_gpu(kernel, monkeypatch):
    """bf16 on a GPU: flash-attention's / torch's varlen kernel gives what SDPA gives sample by sample."""
    if kernel == "flash_attn":
        pytest.importorskip("flash_attn")
    else:
        monkeypatch.setattr(attention, "_has_flash_attn", lambda: False)
        assert attention._torch_varlen() is not None
    torch.manual_seed(0)
    lengths = [700, 5, 300, 1]
    q, k, v = (torch.randn(1, 8, sum(lengths), 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    cu = torch.tensor([0, *lengths], device="cuda").cumsum(0).to(torch.int32)
    got = attention.varlen_attention(q, k, v, cu, max(lengths), 0.0, 0.125)
    want = attention._per_segment(q.float(), k.float(), v.float(), cu, 0.0, 0.125)
    torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=2e-2)
