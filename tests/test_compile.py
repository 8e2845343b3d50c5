"""Compiled decoder layers (`janus_ft.model.compile`, `model.compile`): losses and LoRA gradients equal
eager ones, padded and packed batches of ever new lengths stop compiling after the first few, and a
copy of a compiled model runs its own weights.

Compiling with inductor costs minutes on 2 loaded CPU cores (131-155 s for 8 batches at load 8-9,
less once inductor's on-disk cache is warm), so the inductor test (per-sample attention, the default
with packing) is `slow`; the fast ones use dynamo's `eager` backend, which captures and guards the
same graphs (the recompile count is dynamo's) and runs them without code generation."""

import copy

import pytest
import torch
from torch._dynamo.utils import counters

from janus_ft.data.collate import collate, loss_plan, pack
from janus_ft.model.attention import set_packed_attention
from janus_ft.model.compile import compile_layers, compiled_layers
from janus_ft.model.loss import compute_loss_parts

# Graphs the first batches may compile, at most: a padded batch of its first length, then one with
# the length symbolic; the same for packed rows (one row: dynamo specialises a dimension of size 1);
# each for a first layer whose input carries no gradient and for the others (8 with SDPA's mask;
# 6 measured). On a CPU, per-sample attention runs eagerly between the graphs of a layer
# (`janus_ft.model.attention._per_segment`): the layer's code before and after it, and the
# attention module's, are graphs of their own (20 measured).
MAX_GRAPHS = {"mask": 8, "per_sample": 24}


@pytest.fixture(params=["mask"])
def model(tiny_model, request):
    """The tiny Janus with random LoRA on the LLM, rows packed with `request.param` attention
    (padded rows keep SDPA's mask either way)."""
    from peft import LoraConfig, get_peft_model

    from janus_ft.model.lora import target_regex

    lora = get_peft_model(tiny_model, LoraConfig(r=4, lora_alpha=8, target_modules=target_regex(tiny_model, ["llm"])))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.1)
    set_packed_attention(lora, packing=True, mode=request.param)
    torch._dynamo.reset()
    counters.clear()
    yield lora.train()
    torch._dynamo.reset()


def batches(seed: int, n: int, rows: int = 4) -> list[dict]:
    """`n` batches of `rows` text samples of random lengths (5-60 tokens), padded and packed in turn."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        samples = []
        for length in torch.randint(5, 60, (rows,), generator=g).tolist():
            ids = torch.randint(10, 600, (length,), generator=g)
            samples.append({"input_ids": ids, "labels": torch.cat([torch.tensor([-100]), ids[1:]]), "task": 1})
        batch = pack(samples) if i % 2 else collate(samples, pad_id=0)
        batch["loss_plan"] = loss_plan(batch, image_token_id=10 ** 6)
        out.append(batch)
    return out


def train_pass(model, batches: list[dict]) -> list[tuple[torch.Tensor, dict]]:
    out = []
    for batch in batches:
        model.zero_grad(set_to_none=True)
        loss = compute_loss_parts(model, batch).total
        loss.backward()
        out.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    return out


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def assert_close(got, want, tol=1e-4):
    for (loss, grads), (want_loss, want_grads) in zip(got, want):
        assert abs(float(loss - want_loss)) <= tol * abs(float(want_loss))
        assert grads.keys() == want_grads.keys() and grads
        for name, grad in grads.items():
            scale = want_grads[name].abs().max()
            assert (grad - want_grads[name]).abs().max() <= tol * scale, name


def evaluate(model, batches: list[dict]) -> list[torch.Tensor]:
    model.eval()
    with torch.no_grad():
        losses = [compute_loss_parts(model, batch).total for batch in batches]
    model.train()
    return losses


def check_compiled(model, backend: str, max_graphs: int) -> None:
    eager_first, eager_more = train_pass(model, batches(1, 4)), train_pass(model, batches(2, 4))
    eager_eval = evaluate(model, batches(3, 4))
    assert compile_layers(model, backend=backend) == compiled_layers(model) == 2
    first = train_pass(model, batches(1, 4))
    compiled = graphs()
    assert 0 < compiled <= max_graphs
    more = train_pass(model, batches(2, 4))   # new lengths, padded and packed
    assert graphs() == compiled                # nothing compiled again
    assert_close(first, eager_first)
    assert_close(more, eager_more)
    # evaluation (eval mode, no gradient) compiles its own variants, within dynamo's limit
    for got, want in zip(evaluate(model, batches(3, 4)), eager_eval):
        assert abs(float(got - want)) <= 1e-4 * float(want)
    evaluated = graphs()
    evaluate(model, batches(4, 4))
    assert compiled < evaluated == graphs()


def test_new_lengths_do_not_recompile(model, caplog):
    check_compiled(model, backend="eager", max_graphs=MAX_GRAPHS["mask"])
    assert not [r for r in caplog.records if "recompile_limit" in r.getMessage()]   # no layer fell back to eager


def test_a_copy_of_a_compiled_model_runs_its_own_layers(model):
    compile_layers(model, backend="eager")
    batch = batches(3, 1)
    with torch.no_grad():
        want = compute_loss_parts(model, batch[0]).total
        twin = copy.deepcopy(model)
        for name, param in twin.named_parameters():
            if "lora_B" in name:
                param.zero_()   # the twin's adapter is a no-op: its loss is the base model's
        twin_loss = compute_loss_parts(twin, batch[0]).total
        assert compute_loss_parts(model, batch[0]).total == want
        with model.disable_adapter():
            base = compute_loss_parts(model, batch[0]).total
    assert abs(float(twin_loss - base)) <= 1e-5 * float(base) and abs(float(want - base)) > 1e-2


@pytest.mark.nightly   # minutes on 2 CPU cores: run by the nightly command (README), not CI
@pytest.mark.slow
@pytest.mark.parametrize("model", ["per_sample"], indirect=True)
def test_inductor_layers_equal_eager_and_do_not_recompile(model, caplog):
    check_compiled(model, backend="inductor", max_graphs=MAX_GRAPHS["per_sample"])
    assert not [r for r in caplog.records if "recompile_limit" in r.getMessage()]
