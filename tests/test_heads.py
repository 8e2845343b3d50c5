"""Chunked heads: losses and gradients equal the one-piece float32 cross-entropy (1e-6) -- of the
head's input, of LoRA weights on a head, of a head trained fully -- on SFT, DPO and GRPO batches,
with chunk sizes that do and do not divide the target count; a frozen head gets no weight gradient
and runs one head forward per chunk, a bf16 head trained fully stays in one piece."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch import nn

from janus_ft.data.collate import collate, loss_plan
from janus_ft.data.dataset import JanusDataset
from janus_ft.data.preference import PairCollator, PairDataset, parse_pair
from janus_ft.data.records import parse_record
from janus_ft.infer.generate import prompt_inputs
from janus_ft.infer.prompts import prompt_record, record_inputs
from janus_ft.infer.rollout import Rollout, completion_batch
from janus_ft.janus import SpecialIds
from janus_ft.model.grpo_loss import grpo_loss
from janus_ft.model.heads import HEAD_CHUNK_SIZE, nll, target_nll
from janus_ft.model.logprobs import target_logps
from janus_ft.model.loss import compute_loss_parts
from janus_ft.model.preference import preference_loss
from janus_ft.recipe.sections import ModelArgs


def assert_close(got: torch.Tensor, want: torch.Tensor, what: str = "", tolerance: float = 1e-6) -> None:
    """Equal to 1e-6 relative to the tensor's norm (float32 rounding: the chunks add their terms in
    another order, and a frozen head's input gradient is scaled after its matmul, not before)."""
    assert got.shape == want.shape and got.dtype == want.dtype, what
    error, scale = float(torch.linalg.vector_norm(got - want)), float(torch.linalg.vector_norm(want))
    assert error <= tolerance * scale, f"{what}: off by {error:.3g} in norm {scale:.3g}"


N, WIDTH, VOCAB = 23, 16, 50     # 23 targets: chunks of 5 (no divisor), 1 (a divisor) and 23 (one chunk)


def generation_head_like():
    """The shape of Janus's generation head: Linear -> GELU -> Linear."""
    return nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.GELU(), nn.Linear(WIDTH, VOCAB))


def with_lora(head):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(head, LoraConfig(r=4, lora_alpha=8, target_modules=["0", "2"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.3)   # lora_B starts at zero: a no-op adapter could not fail the test
    return model


def frozen(head):
    return head.requires_grad_(False)


HEADS = {"frozen linear": lambda: frozen(nn.Linear(WIDTH, VOCAB)),
         "frozen generation head": lambda: frozen(generation_head_like()),
         "trained linear": lambda: nn.Linear(WIDTH, VOCAB),
         "trained generation head": generation_head_like,
         "LoRA on the generation head": lambda: with_lora(generation_head_like())}


def scored(head, chunk_size):
    """Losses and the gradients of the input and of the trainable weights, for a loss that weighs
    each target differently (as DPO and GRPO do)."""
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(N, WIDTH, generator=gen).requires_grad_()
    targets = torch.randint(0, VOCAB, (N,), generator=gen)
    weights = torch.rand(N, generator=gen)
    losses = target_nll(head, hidden, targets, chunk_size)
    (losses * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in head.named_parameters() if p.requires_grad}
    head.zero_grad(set_to_none=True)
    return losses.detach(), hidden.grad, grads


@pytest.mark.parametrize("kind", list(HEADS))
@pytest.mark.parametrize("chunk_size", [5, 1, 23])
def test_chunks_equal_one_piece(kind, chunk_size):
    torch.manual_seed(0)
    head = HEADS[kind]()
    want_losses, want_input, want_weights = scored(head, 0)
    losses, input_grad, weight_grads = scored(head, chunk_size)
    assert_close(losses, want_losses, "losses")
    assert_close(input_grad, want_input, "input gradient")
    assert weight_grads.keys() == want_weights.keys() and (len(want_weights) > 0) == (not kind.startswith("frozen"))
    for name, grad in want_weights.items():
        assert_close(weight_grads[name], grad, name)
    assert losses.dtype == torch.float32


class CountingLinear(nn.Linear):
    calls = 0

    def forward(self, x):
        CountingLinear.calls += 1
        return super().forward(x)


def test_a_frozen_head_runs_once_per_chunk_and_computes_no_weight_gradient():
    head = frozen(CountingLinear(WIDTH, VOCAB))
    hidden = torch.randn(N, WIDTH, requires_grad=True)
    CountingLinear.calls = 0
    target_nll(head, hidden, torch.zeros(N, dtype=torch.long), 5).sum().backward()
    assert CountingLinear.calls == 5   # ceil(23 / 5): no recomputation in backward
    assert head.weight.grad is None and hidden.grad is not None


def test_a_bf16_head_trained_fully_stays_in_one_piece():
    """Autograd would add its chunks' weight gradients in bf16; in one piece the matmul adds them in
    float32."""
    head = nn.Linear(WIDTH, VOCAB).to(torch.bfloat16)
    hidden = torch.randn(N, WIDTH, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, VOCAB, (N,))
    target_nll(head, hidden, targets, 5).sum().backward()
    chunked = head.weight.grad.clone()
    head.zero_grad(set_to_none=True)
    nll(head, hidden, targets).sum().backward()
    assert torch.equal(chunked, head.weight.grad)


def test_without_gradients_chunks_give_the_same_losses():
    head = generation_head_like()
    hidden, targets = torch.randn(N, WIDTH), torch.randint(0, VOCAB, (N,))
    with torch.no_grad():
        assert_close(target_nll(head, hidden, targets, 4), nll(head, hidden, targets))


def test_the_recipe_default_is_the_library_default():
    assert ModelArgs().head_chunk_size == HEAD_CHUNK_SIZE


# --- the whole model: SFT, DPO and GRPO batches ----------------------------------------------------

def lora_model(model, heads: str):
    """LoRA on the LLM plus, by `heads`: nothing on the heads (frozen), LoRA on both heads, or both
    heads trained fully (modules_to_save)."""
    from peft import LoraConfig, get_peft_model

    from janus_ft.model.lora import target_regex

    components = ["llm", "aligner"] + (["gen_head"] if heads == "lora" else [])
    regex = target_regex(model, components)
    if heads == "lora":
        regex = regex[:-2] + "|lm_head)$"
    config = LoraConfig(r=4, lora_alpha=8, target_modules=regex,
                        modules_to_save=["model.generation_head", "lm_head"] if heads == "full" else None)
    peft_model = get_peft_model(model, config)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return peft_model


@pytest.fixture()
def images(tmp_path):
    for i, colour in enumerate([(200, 30, 30), (30, 60, 220), (30, 170, 60)]):
        Image.new("RGB", (64, 64), colour).save(tmp_path / f"{i}.png")
    return tmp_path


def codes_of(folder, processor):
    return {str(folder / f"{i}.png"): [(7 * i + 3 * j) % 256 for j in range(processor.num_image_tokens)] for i in range(3)}


def sft_batch(folder, processor):
    objs = [{"query": "<image>What colour is the shape?", "response": "red, I would say", "images": ["0.png"]},
            {"query": "What is 7 + 7?", "response": "fourteen, or 14 in digits"},
            {"query": "a red circle", "response": "<image>", "images": ["1.png"]},
            {"query": "a blue square", "response": "<image>", "images": ["2.png"]}]
    records = [parse_record(o, folder / "d.jsonl", i + 1) for i, o in enumerate(objs)]
    ds = JanusDataset(records, processor, "janus-pro", codes=codes_of(folder, processor))
    return collate([ds[i] for i in range(len(ds))], processor.tokenizer.pad_token_id)


def dpo_batch(folder, processor):
    rows = [{"prompt": "<image>What colour is it?", "chosen": "red as a fire truck", "rejected": "blue", "images": ["0.png"]},
            {"prompt": "Which is a colour: red or circle?", "chosen": "red", "rejected": "circle, a shape"},
            {"query": "a red square", "response": "<image>", "images": ["0.png"], "rejected_images": ["1.png"]}]
    pairs = [parse_pair(r, folder / "d.jsonl", i + 1) for i, r in enumerate(rows)]
    samples = [PairDataset([p], processor, "janus-pro", codes=codes_of(folder, processor)).sample(0) for p in pairs]
    return PairCollator(processor.tokenizer.pad_token_id, processor.tokenizer.convert_tokens_to_ids(
        "<image_placeholder>"))(samples)


def grpo_batch(processor, image_token_id):
    special = SpecialIds.from_tokenizer(processor.tokenizer)
    text_prompt = record_inputs(processor, prompt_record("What is 1 + 5?"), "janus-pro")["input_ids"][0].tolist()
    image_prompt = prompt_inputs(processor, "a red fox", "janus-pro")["input_ids"][0].tolist()
    n = processor.num_image_tokens
    rollouts = [Rollout("text", text_prompt, [[40, 41, 42, special.eos], [43, 44, 45, 46, 47]], [False, True]),
                Rollout("generation", image_prompt, [[(5 * k + j) % 256 for j in range(n)] for k in range(2)],
                        [False, False])]
    return completion_batch(rollouts, special, image_token_id)


def objective(method, model, batch, chunk_size):
    """The loss each method differentiates, with the heads scored in chunks of `chunk_size`."""
    if method == "sft":
        parts = compute_loss_parts(model, batch, head_chunk_size=chunk_size)
        return parts.total / parts.n_tokens, parts.total
    lp = target_logps(model, batch, head_chunk_size=chunk_size)
    if method == "dpo":
        n = lp.sums.shape[0] // 2
        ref = lp.sums.detach() - 0.3 * torch.arange(2 * n)   # a reference that differs per row
        return preference_loss(lp.sums[:n], lp.sums[n:], ref[:n], ref[n:], lp.counts[:n], lp.counts[n:],
                               0.1, "sigmoid").losses.mean(), lp.tokens
    advantages = torch.tensor([1.0, -0.5, 0.7, -1.2])
    old = lp.tokens.detach() + 0.05 * torch.linspace(-1, 1, lp.tokens.numel()).view_as(lp.tokens)
    return grpo_loss(lp.tokens, lp.mask, advantages, old_logps=old, ref_logps=old, beta=0.04).loss, lp.tokens


def gradients(model, method, batch, chunk_size):
    """The loss, the values it is made of, and the gradients of the LLM's last hidden states (what
    the heads read) and of every trainable weight."""
    from janus_ft.model.loss import core_model

    kept = []

    def keep(module, args, kwargs, output):
        output.last_hidden_state.retain_grad()
        kept.append(output.last_hidden_state)

    hook = core_model(model).model.language_model.register_forward_hook(keep, with_kwargs=True)
    try:
        loss, values = objective(method, model, batch, chunk_size)
    finally:
        hook.remove()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.detach(), values.detach(), kept[0].grad, grads


@pytest.mark.parametrize("heads", ["frozen", "lora", "full"])
@pytest.mark.parametrize("method", ["sft", "dpo", "grpo"])
def test_model_losses_and_gradients_equal_one_piece(images, tiny_model, tiny_processor, method, heads):
    batch = {"sft": lambda: sft_batch(images, tiny_processor), "dpo": lambda: dpo_batch(images, tiny_processor),
             "grpo": lambda: grpo_batch(tiny_processor, tiny_model.config.image_token_id)}[method]()
    model = lora_model(tiny_model, heads)
    plan = loss_plan(batch, tiny_model.config.image_token_id)
    counts = [len(plan["text_targets"]), len(plan["gen_targets"])]
    divisor = next(d for d in range(2, counts[1]) if counts[1] % d == 0)
    odd = next(d for d in range(3, min(counts)) if all(n % d for n in counts))
    want_loss, want_values, want_hidden, want = gradients(model, method, batch, 0)
    on_heads = [n for n in want if "lm_head" in n or "generation_head" in n]
    assert len(on_heads) == {"frozen": 0, "lora": 6, "full": 5}[heads], on_heads
    for chunk_size in (divisor, odd):
        loss, values, hidden, grads = gradients(model, method, batch, chunk_size)
        assert_close(loss, want_loss, "loss")
        assert_close(values, want_values, "log-probabilities")
        assert_close(hidden, want_hidden, "last hidden states")
        for name, grad in want.items():
            # Deeper in the model the rounding differences of the last hidden states' gradient grow
            # through the layers' backward (measured: up to 1.1e-6 in the LLM's LoRA weights).
            assert_close(grads[name], grad, name, 1e-6 if name in on_heads else 1e-5)


def test_a_head_zero3_shards_stays_in_one_piece():
    """ZeRO-3 gathers weights by a collective per call: ranks with different target counts must not
    call the head a different number of times."""
    head = frozen(CountingLinear(WIDTH, VOCAB))
    head.weight.ds_id = 0   # what DeepSpeed ZeRO-3 marks its parameters with
    hidden = torch.randn(N, WIDTH, requires_grad=True)
    CountingLinear.calls = 0
    target_nll(head, hidden, torch.zeros(N, dtype=torch.long), 5).sum().backward()
    assert CountingLinear.calls == 1


def test_a_frozen_head_with_nothing_to_score_is_not_called():
    head = frozen(CountingLinear(WIDTH, VOCAB))
    hidden = torch.randn(4, WIDTH, requires_grad=True)[:0]
    CountingLinear.calls = 0
    losses = target_nll(head, hidden, torch.zeros(0, dtype=torch.long), 5)
    assert CountingLinear.calls == 0 and losses.shape == (0,) and losses.dtype == torch.float32
    assert losses.requires_grad   # a batch whose other head has nothing either still gives a loss to backward
