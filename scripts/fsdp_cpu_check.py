"""janus_ft's loss under torch FSDP2 on CPU ranks: one step's gradients equal one process's.

    torchrun --standalone --nproc_per_node 2 scripts/fsdp_cpu_check.py

accelerate runs FSDP only on GPU-type ranks, so `recipes/accelerate/fsdp.yaml` cannot train on a
machine without GPUs. This check drives torch's FSDP2 (`fully_shard`, the engine accelerate's FSDP
v2 uses) directly over gloo, with the tiny Janus, LoRA as in recipes/demo.yaml and the same layers
wrapped as the accelerate config wraps (Llama decoder and SigLIP encoder layers, then the root). Each
rank scores its half of a mixed batch; after backward the gathered LoRA gradients must equal those
of one unsharded model scoring the whole batch, and the summed loss the unsharded loss.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def model_and_batches(world: int):
    from transformers import JanusForConditionalGeneration, JanusProcessor, set_seed

    from janus_ft.data.collate import collate
    from janus_ft.data.dataset import build_datasets, read_sources
    from janus_ft.model.lora import apply_lora
    from janus_ft.recipe import load_recipe
    from janus_ft.tiny import tiny_path

    recipe = load_recipe("recipes/demo.yaml", ["data.val=[]", "lora.dropout=0"])
    model = JanusForConditionalGeneration.from_pretrained(tiny_path())
    processor = JanusProcessor.from_pretrained(tiny_path())
    sets = build_datasets(read_sources(recipe.data.train), model, processor, recipe, "janus-pro")
    set_seed(0)
    model = apply_lora(model, recipe.lora)
    with torch.no_grad():   # lora_B starts at zero; random values make every gradient non-trivial
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    samples = [sets["understanding"][0], sets["generation"][0], sets["text"][0], sets["understanding"][1]]
    pad = processor.tokenizer.pad_token_id
    per_rank = len(samples) // world
    return model, collate(samples, pad), [collate(samples[r * per_rank:(r + 1) * per_rank], pad)
                                          for r in range(world)]


def main() -> None:
    import copy

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from janus_ft.model.loss import compute_loss_parts

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    model, whole, shards = model_and_batches(world)
    reference = copy.deepcopy(model)

    ref = compute_loss_parts(reference, whole)
    (ref.total / ref.n_tokens).backward()

    mesh = init_device_mesh("cpu", (world,))
    for module in model.modules():
        if type(module).__name__ in ("LlamaDecoderLayer", "JanusVisionEncoderLayer"):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    parts = compute_loss_parts(model, shards[rank])
    # FSDP averages gradients over ranks: scale so the sum over ranks is the whole batch's mean.
    (parts.total / ref.n_tokens * world).backward()
    total = torch.tensor([float(parts.total)])
    dist.all_reduce(total)

    worst = 0.0
    grads = dict(reference.named_parameters())
    for name, param in model.named_parameters():
        if param.grad is None:
            continue
        grad = param.grad.full_tensor() if hasattr(param.grad, "full_tensor") else param.grad
        worst = max(worst, float((grad - grads[name].grad).abs().max()))
    if rank == 0:
        print(f"FSDP2 x{world} on CPU: loss sum {float(total):.6f} vs one process {float(ref.total):.6f}; "
              f"largest LoRA gradient difference {worst:.1e}")
        assert abs(float(total) - float(ref.total)) < 1e-3 * float(ref.total) and worst < 1e-5
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
