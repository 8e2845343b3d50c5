"""`janus-ft bench` on the tiny demo recipe: every number is reported, positive and finite, the named
stages make up the step, the bare PyTorch loop trains on exactly the same batches (same samples,
tokens, FLOPs and losses), and model FLOPs follow the stated formula."""

import json
import math
import sys
import time
from pathlib import Path

import pytest
from torch import nn

from janus_ft.bench import throughput
from janus_ft.cli import main

REPO = Path(__file__).resolve().parent.parent
RATES = ("samples_per_s", "supervised_tokens_per_s", "real_tokens_per_s", "step_time_s",
         "peak_memory_bytes", "model_flops_per_step", "model_flops_per_s", "mfu")


def run_bench(out: Path, *extra: str) -> dict:
    code = main(["bench", "--recipe", str(REPO / "recipes" / "demo.yaml"), "train.disable_tqdm=true",
                 "--steps", "2", "--warmup", "1", "--compare", "bare", "--in-process", *extra, "--json", str(out)])
    assert code == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module", params=["separate", "interleaved"])
def report(request, tmp_path_factory, tiny_dir):
    """The two variants one after the other, and taking turns step by step (--interleave)."""
    extra = ["--interleave"] if request.param == "interleaved" else []
    return run_bench(tmp_path_factory.mktemp("bench") / "bench.json", *extra)


def test_every_number_is_reported(report):
    assert [v["name"] for v in report["variants"]] == ["janus-ft", "bare"]
    assert report["peak_matmul_flops"] > 0 and report["machine"]["device"] == "cpu"
    for v in report["variants"]:
        assert v["measured_steps"] == 2 and len(v["losses"]) == 2
        for field in RATES:
            assert math.isfinite(v[field]) and v[field] > 0, (v["name"], field, v[field])
        assert v["mfu"] < 1
        assert 0 < v["real_token_fraction"] <= 1
        assert v["memory_kind"] == "rss_peak"
        # the demo's 5:1:4 mix at batch 5 x 2 accumulation: 10 samples a step, padded rows
        assert v["totals"]["samples"] == 20 and v["real_token_fraction"] < 1


def test_breakdown_makes_up_the_step(report):
    for v in report["variants"]:
        parts = v["breakdown_s"]
        assert set(parts) == {"data", "vq_encode", "forward", "backward", "optimizer", "other"}
        assert sum(parts.values()) == pytest.approx(v["step_time_s"], rel=1e-6)
        for stage in ("data", "forward", "backward", "optimizer"):
            assert parts[stage] > 0, (v["name"], stage)
        assert parts["vq_encode"] == 0   # the code cache is warm
        assert parts["other"] < 0.5 * v["step_time_s"]   # the named stages explain most of it


def test_bare_loop_trains_on_the_same_batches(report):
    framework, bare = report["variants"]
    assert bare["totals"] == framework["totals"]
    # same LoRA initialisation, loss, AdamW and schedule: the second step's loss agrees too
    assert bare["losses"] == pytest.approx(framework["losses"], rel=1e-4)


@pytest.fixture()
def clock(monkeypatch):
    """`time.perf_counter` that `jump(seconds)` moves forward: time spent in a step, without sleeping
    (a real sleep would have to outlast a step's time, which a loaded machine stretches)."""
    offset, real = [0.0], time.perf_counter
    monkeypatch.setattr(time, "perf_counter", lambda: real() + offset[0])

    def jump(seconds: float) -> None:
        offset[0] += seconds

    return jump


def test_interleaved_steps_take_turns_on_the_same_batches(tmp_path, tiny_dir, monkeypatch, clock):
    """--interleave: a bare step right before or right after each janus-ft step, half the steps each
    way in a seeded order, each pair on the same batch; janus-ft's step time leaves the bare step out."""
    from janus_ft.bench import interleave, loops
    from janus_ft.train.base import JanusTrainer

    order, models = [], {}
    training_step, bare_step = JanusTrainer.training_step, loops.BareLoop.step

    def janus(self, *args, **kwargs):
        order.append("J")
        models["J"] = self.model
        return training_step(self, *args, **kwargs)

    def bare(self):
        order.append("B")
        models["B"] = self.model
        bare_step(self)
        clock(100)   # work between janus-ft's steps that is not janus-ft's

    monkeypatch.setattr(JanusTrainer, "training_step", janus)
    monkeypatch.setattr(loops.BareLoop, "step", bare)
    report = run_bench(tmp_path / "bench.json", "--interleave")
    # the demo accumulates 2 micro-batches a step; 1 warm-up + 2 measured steps (train.seed 42)
    orders = [["janus-ft", "bare"]] + interleave.turn_orders(["janus-ft", "bare"], 2, seed=42)
    assert "".join(order) == "".join("BJJ" if o[0] == "bare" else "JJB" for o in orders)
    assert [s["order"] for s in report["variants"][0]["rounds"][0]] == orders[1:]
    assert {o[0] for o in orders[1:]} == {"bare", "janus-ft"}   # each goes first once
    framework, bare_result = report["variants"]
    assert report["interleaved"] and bare_result["totals"] == framework["totals"]
    assert bare_result["losses"] == pytest.approx(framework["losses"], rel=1e-4)
    assert framework["median_step_time_s"] < 50   # the bare half's time is left out of janus-ft's step
    # the two models share their frozen weights and nothing that trains
    ours, twin = dict(models["J"].named_parameters()), dict(models["B"].named_parameters())
    assert ours.keys() == twin.keys()
    assert all((ours[k] is twin[k]) == (not ours[k].requires_grad) for k in ours)
    assert any(p.requires_grad for p in ours.values())


def test_interleave_is_refused_without_bare(tmp_path, tiny_dir, capsys):
    code = main(["bench", "--recipe", str(REPO / "recipes" / "demo.yaml"), "--steps", "1",
                 "--compare", "checkpointing", "--interleave"])
    assert code == 2 and "--interleave" in capsys.readouterr().err


@pytest.mark.parametrize("variant, message", [
    ("lora.r=4", "'lora.r=4' is neither bare, cache nor checkpointing, nor an override of how the same model "
                 "trains on the same samples"),
    ("bar", "'bar' is neither bare"),
    ("data.packing=maybe", "data.packing"),
])
def test_a_variant_that_changes_the_model_or_data_is_refused(tmp_path, tiny_dir, capsys, variant, message):
    code = main(["bench", "--recipe", str(REPO / "recipes" / "demo.yaml"), "--steps", "1", "--compare", variant])
    assert code == 2 and message in capsys.readouterr().err


PACKED = "data.packing=true"


def test_an_override_variant_trains_the_same_samples_its_own_way(tmp_path, tiny_dir):
    """--compare data.packing=true: the recipe packed, on the same samples; per-sample attention
    keeps every loss what padding gives."""
    code = main(["bench", "--recipe", str(REPO / "recipes" / "demo.yaml"), "train.disable_tqdm=true", "--steps", "2",
                 "--warmup", "1", "--compare", PACKED, "--in-process", "--json", str(tmp_path / "b.json")])
    assert code == 0
    padded, packed = json.loads((tmp_path / "b.json").read_text())["variants"]
    assert (padded["name"], packed["name"]) == ("janus-ft", PACKED)
    assert packed["real_token_fraction"] == 1.0 > padded["real_token_fraction"]
    for key in ("samples", "supervised_tokens", "real_tokens", "images", "flops"):
        assert packed["totals"][key] == padded["totals"][key], key
    assert packed["losses"] == pytest.approx(padded["losses"], rel=1e-5)


def test_janus_ft_variants_take_turns_step_by_step(tmp_path, tiny_dir, monkeypatch, clock):
    """--interleave with an override variant and the bare loop: the variant is a second janus-ft
    trainer (its own thread, its own attention) run one step at a time; the three take their steps
    in the orders drawn, on the same batches, and each clock leaves the others' steps out."""
    import threading

    from janus_ft.bench import interleave, loops
    from janus_ft.model.attention import PER_SAMPLE
    from janus_ft.model.loss import core_model
    from janus_ft.train.base import JanusTrainer

    steps, attention = [], {}
    training_step, bare_step = JanusTrainer.training_step, loops.BareLoop.step

    def trainer_step(self, *args, **kwargs):
        name = "J" if threading.current_thread() is threading.main_thread() else "P"
        steps.append(name)
        attention[name] = core_model(self.model).config.text_config._attn_implementation
        out = training_step(self, *args, **kwargs)
        if name == "P":
            clock(50)   # two micro-batches a step: 100 s that are not janus-ft's
        return out

    def bare(self):
        steps.append("B")
        bare_step(self)
        clock(100)

    monkeypatch.setattr(JanusTrainer, "training_step", trainer_step)
    monkeypatch.setattr(loops.BareLoop, "step", bare)
    code = main(["bench", "--recipe", str(REPO / "recipes" / "demo.yaml"), "train.disable_tqdm=true", "--steps", "6",
                 "--warmup", "1", "--compare", PACKED, "--compare", "bare", "--interleave", "--in-process",
                 "--json", str(tmp_path / "b.json")])
    assert code == 0
    names = ["janus-ft", PACKED, "bare"]
    orders = [names] + interleave.turn_orders(names, 6, seed=42)
    letter = {"janus-ft": "JJ", PACKED: "PP", "bare": "B"}   # 2 micro-batches a trainer step
    assert "".join(steps) == "".join(letter[n] for order in orders for n in order)
    assert attention == {"J": "sdpa", "P": PER_SAMPLE}
    report = json.loads((tmp_path / "b.json").read_text())
    base, packed, bare_result = report["variants"]
    assert [v["name"] for v in report["variants"]] == names
    assert [s["order"] for s in packed["rounds"][0]] == orders[1:]
    assert packed["totals"]["samples"] == base["totals"]["samples"] == bare_result["totals"]["samples"]
    assert packed["losses"] == pytest.approx(base["losses"], rel=1e-5)
    assert bare_result["losses"] == pytest.approx(base["losses"], rel=1e-4)
    assert base["median_step_time_s"] < 50 and bare_result["median_step_time_s"] < 50
    assert packed["median_step_time_s"] > 100   # its own time is its own


def test_model_flops_follow_the_formula(tiny_model):
    from peft import LoraConfig, get_peft_model

    def linear_macs(module):
        return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))

    llm = linear_macs(tiny_model.model.language_model)
    vision = linear_macs(tiny_model.model.vision_model) + tiny_model.model.vision_model.embeddings.patch_embedding.weight.numel()
    tiny_model.requires_grad_(True)   # full fine-tuning: the familiar 6 x params per token
    full = throughput.FlopModel.of(tiny_model)
    assert full.per_token["llm"] == 6 * llm and full.per_token["vision"] == 6 * vision

    tiny_model.requires_grad_(False)
    lora = get_peft_model(tiny_model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    per_token = throughput.FlopModel.of(lora).per_token
    adapters = sum(m.in_features * m.out_features for n, m in lora.named_modules()
                   if "lora_" in n and isinstance(m, nn.Linear))
    # frozen weights: forward + activation gradient; adapters also get a weight gradient
    assert per_token["llm"] + per_token["vision"] == 4 * (llm + vision) + 6 * adapters
    assert per_token["lm_head"] == 4 * tiny_model.lm_head.in_features * tiny_model.lm_head.out_features



def test_random_model_presets_have_the_real_architecture():
    import torch
    from transformers import JanusForConditionalGeneration

    from janus_ft.tiny import build_tokenizer, sized_config

    tokenizer = build_tokenizer()
    sizes = {}
    for preset in ("janus-pro-1b", "janus-pro-7b"):
        config = sized_config(tokenizer, preset)
        with torch.device("meta"):   # sizes only: no memory, no initialisation
            model = JanusForConditionalGeneration(config)
        sizes[preset] = sum(p.numel() for p in model.parameters())
        assert config.vision_config.num_hidden_layers == 24 and config.vision_config.hidden_size == 1024
        assert (config.vision_config.image_size // config.vision_config.patch_size) ** 2 == 576
        assert config.vq_config.num_embeddings == 16384 and config.text_config.vocab_size == 102400
        assert config.image_token_id == tokenizer.convert_tokens_to_ids("<image_placeholder>")
    assert 2.0e9 < sizes["janus-pro-1b"] < 2.1e9 and 7.3e9 < sizes["janus-pro-7b"] < 7.5e9


def test_startup_bench_data_and_its_stop_at_step_one(tmp_path):
    """`bench --startup`: the synthetic records (half understanding over a pool of images, half
    text), and a run stopped, with every process it started, once `step 1/` is printed."""
    import json
    import os
    import sys
    import time

    from janus_ft.bench.startup import measure, synthetic_records

    path = synthetic_records(tmp_path, 6, n_images=2, size=16)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [("images" in r) for r in rows] == [True, False] * 3
    assert sorted({r["images"][0] for r in rows if "images" in r}) == ["images/00000.png", "images/00001.png"]
    assert all((tmp_path / r["images"][0]).is_file() for r in rows if "images" in r)
    pid_file = tmp_path / "grandchild.pid"
    child = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
             f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(1); print('step 1/9', flush=True); time.sleep(60)")
    started = time.monotonic()
    result = measure([sys.executable, "-c", child], dict(os.environ))
    assert time.monotonic() - started < 30 and 1 <= result["seconds"] < 30
    assert result["prepared"] == 0 and result["rank_peak_rss_mb"] == []
    status = Path(f"/proc/{pid_file.read_text()}/status")

    def running() -> bool:   # the grandchild is gone too (or a zombie waiting to be reaped)
        try:
            return "State:\tZ" not in status.read_text()
        except OSError:
            return False

    deadline = time.monotonic() + 5
    while running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running()


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_variant_process_ends_with_the_benchmark_that_started_it():
    """Killing `janus-ft bench` must not leave its child (holding a whole model) running."""
    import os
    import signal
    import subprocess

    code = ("import subprocess, sys, time\nfrom janus_ft.bench.run import _die_with_parent\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], preexec_fn=_die_with_parent)\n"
            "print(p.pid, flush=True)\ntime.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if "State:\tZ" in Path(f"/proc/{child}/status").read_text():
                break   # ended (a zombie until init reaps it)
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the child outlived its parent")


# --- memory of one step (`--memory`), levers on and off (`--levers`), random models layer by layer ---

def test_tensor_memory_counts_live_storages_by_kind():
    import torch

    from janus_ft.bench.memory import TensorMemory

    weight = nn.Parameter(torch.ones(100))
    memory = TensorMemory(vocab_sizes={10}, head_weights=[])
    hooks = memory.track_gradients([weight])
    with memory:
        a = torch.zeros(1000)                  # 4000 bytes
        logits = torch.zeros(5, 10)            # 200 bytes, as wide as a vocabulary
        view = a.view(10, 100)
        a.add_(1)                              # a view and an in-place op allocate nothing
        doubled = a * 2                        # 4000 bytes, freed below
        del doubled
        (weight * 3).sum().backward()          # the gradient: 400 bytes, trainable
    for hook in hooks:
        hook.remove()
    assert memory.peak == 4000 + 200 + 4000   # a, logits and doubled
    assert memory.at_peak == {"trainable": 0, "activations": 8000, "logits": 200}
    assert memory.now == {"trainable": 400, "activations": 4000, "logits": 200}
    del a, view, logits
    weight.grad = None
    assert memory.now == {"trainable": 0, "activations": 0, "logits": 0}


def test_memory_batches_hold_the_task_and_tokens_asked_for(tmp_path, tiny_processor, tiny_model):
    from janus_ft.bench.memory import memory_batch

    image_id, n = tiny_model.config.image_token_id, tiny_processor.num_image_tokens
    understanding = memory_batch(tiny_processor, "understanding", 64, 2, 256, image_id, tmp_path)
    assert list(understanding["input_ids"].shape) == [2, 64] and understanding["pixel_values"].shape[0] == 2
    assert len(understanding["loss_plan"]["text_targets"]) > 2 * 20 and len(understanding["loss_plan"]["gen_targets"]) == 0
    generation = memory_batch(tiny_processor, "generation", 64, 2, 256, image_id, tmp_path)
    samples = int((generation["position_ids"] == 0).sum())
    assert generation["input_ids"].shape[0] == 1 and samples == 128 // (generation["input_ids"].shape[1] // samples)
    assert len(generation["loss_plan"]["gen_targets"]) == samples * n and len(generation["loss_plan"]["text_targets"]) == 0


def test_memory_step_chunked_heads_save_at_least_the_logits(tmp_path, tiny_dir, tiny_model):
    """One step of the tiny model on a text batch: chunked heads lower the step's tensor peak by more
    than the float32 logits of its targets weigh, and the peak adds up."""
    reports = {}
    for chunk in (0, 8):
        out = tmp_path / f"{chunk}.json"
        assert main(["bench", "--memory", "text:96", "--recipe", str(REPO / "recipes" / "demo.yaml"),
                     "train.per_device_train_batch_size=2", f"model.head_chunk_size={chunk}", "--json", str(out)]) == 0
        reports[chunk] = json.loads(out.read_text())
    one, chunked = reports[0], reports[8]
    n = one["batch"]["text_targets"]
    assert one["batch"] == chunked["batch"] and one["batch"]["shape"] == [2, 96] and n > 140
    assert one["loss"] == pytest.approx(chunked["loss"], rel=1e-6)
    logits = n * tiny_model.config.text_config.vocab_size * 4
    assert one["peak_bytes"] - chunked["peak_bytes"] >= logits
    assert one["peak_logits_bytes"] >= 2 * logits and chunked["peak_logits_bytes"] <= one["peak_logits_bytes"] * 8 / n * 1.5
    for r in (one, chunked):
        at = r["at_peak_bytes"]
        assert sum(at.values()) == r["peak_bytes"] and at["weights"] == r["held_bytes"]["weights"] > 0
        assert at["trainable"] >= r["held_bytes"]["trainable"] > 0 and r["process"]["memory_kind"] == "rss_peak"


def test_memory_step_runs_the_recipes_attention_for_packed_rows_and_refuses_compile(tmp_path, tiny_dir, capsys):
    """The packed generation batch runs `data.packed_attention` (same loss either way, the mask
    materialised only by `mask`); `model.compile` is refused: the count would not see compiled graphs."""
    reports = {}
    for attention in ("mask", "per_sample"):
        out = tmp_path / f"{attention}.json"
        assert main(["bench", "--memory", "generation:64", "--recipe", str(REPO / "recipes" / "demo.yaml"),
                     "data.packing=true", f"data.packed_attention={attention}", "--json", str(out)]) == 0
        reports[attention] = json.loads(out.read_text())
    assert [r["packed_attention"] for r in reports.values()] == ["mask", "per_sample"]
    assert reports["mask"]["loss"] == pytest.approx(reports["per_sample"]["loss"], rel=1e-5)
    assert reports["mask"]["at_peak_bytes"] != reports["per_sample"]["at_peak_bytes"]
    capsys.readouterr()
    assert main(["bench", "--memory", "text:64", "--recipe", str(REPO / "recipes" / "demo.yaml"),
                 "model.compile=true"]) == 2
    assert "model.compile: bench --memory measures eager layers" in capsys.readouterr().err


def test_random_models_are_written_one_layer_at_a_time(tmp_path):
    import torch
    from transformers import JanusForConditionalGeneration

    from janus_ft.bench.random_model import write_random_model
    from janus_ft.tiny import build_tokenizer, tiny_config

    tokenizer = build_tokenizer()
    config = tiny_config(tokenizer)
    config.text_config.num_hidden_layers = 3
    write_random_model(tmp_path, config, tokenizer)
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == [
        "model-layer-001.safetensors", "model-layer-002.safetensors", "model-rest.safetensors"]
    model, info = JanusForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()) and model.dtype == torch.bfloat16
    layers = model.model.language_model.layers
    weights = [layer.mlp.up_proj.weight.detach().float() for layer in layers]
    assert len(layers) == 3 and not torch.equal(weights[1], weights[2]) and not torch.equal(weights[0], weights[1])
    assert all(0.015 < float(w.std()) < 0.025 for w in weights)
    assert all(torch.equal(layer.input_layernorm.weight, torch.ones_like(layer.input_layernorm.weight)) for layer in layers)


def lever_run(key, setting, seconds, memory):
    variant = {"step_time_s": seconds, "real_tokens_per_s": 1000 / seconds, "mfu": 0.25, "peak_memory_bytes": memory,
               "memory_kind": "cuda_max_allocated"}
    report = {"machine": {"gpu": "GPU X", "torch_threads": 4}, "model": {"random_model": "janus-pro-1b"},
              "compute_dtype": "bfloat16", "variants": [variant]}
    return {"lever": "chunked heads", "key": key, "setting": setting, "report": report}


def test_levers_table_pairs_on_with_off_and_names_what_it_skipped():
    from janus_ft.bench.levers import format_levers

    report = {"steps": 6, "warmup": 2, "runs": [
        {"lever": "compiled decoder layers", "key": "model.compile", "skipped": "`model.compile` is not a recipe key"},
        lever_run("model.head_chunk_size", "1024", 2.0, 3 * 2 ** 30), lever_run("model.head_chunk_size", "0", 2.5, 4 * 2 ** 30)]}
    assert format_levers(report).splitlines() == [
        "janus-ft bench --levers: GPU X (4 threads), janus-pro-1b, bfloat16, 6 steps after 2 warm-up, memory = "
        "cuda_max_allocated", "",
        "| lever | setting | s/step | real tokens/s | MFU | peak memory (GiB) | speed, on / off | memory, on / off |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        "| compiled decoder layers | skipped: `model.compile` is not a recipe key | | | | | | |",
        "| chunked heads | `model.head_chunk_size=1024` | 2 | 500 | 25.0% | 3.00 | 1.250x | 0.750x |",
        "|  | `model.head_chunk_size=0` | 2.5 | 400 | 25.0% | 4.00 |  |  |"]


@pytest.mark.nightly   # minutes on 2 CPU cores: run by the nightly command (README), not CI
@pytest.mark.slow
def test_gpu_script_dry_run_writes_the_tables(tmp_path):
    """`scripts/gpu_bench.sh tiny`: the commands of the GPU run on the tiny model, on CPU, writing the
    markdown docs/benchmarks.md shows: every lever on and off (or skipped), and the memory tables."""
    import os
    import subprocess

    from janus_ft.bench.levers import LEVERS, has_key

    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    subprocess.run(["bash", str(REPO / "scripts" / "gpu_bench.sh"), "tiny", str(tmp_path)], cwd=REPO, env=env,
                   check=True, capture_output=True)
    md = (tmp_path / "tiny.md").read_text()
    assert [lever.key for lever in LEVERS] == ["data.packed_attention", "model.head_chunk_size", "model.compile",
                                               "train.dataloader_num_workers"]
    for lever in LEVERS:   # every lever's key is in this build: none is skipped
        assert has_key(lever.key)
        rows = [line for line in md.splitlines() if f"`{lever.key}=" in line or line.startswith(f"| {lever.name} |")]
        assert [r.split(" | ")[1] for r in rows] == [f"`{lever.key}={lever.on}`", f"`{lever.key}={lever.off}`"]
        assert rows[0].count("x |") == 2
    for task in ("understanding", "generation"):
        assert "janus-ft bench --memory: tiny, float32, LoRA r 8" in md and f"batch: {task} " in md
    assert md.count("| **peak, tensors** |") == 2 and md.count("| lever | setting |") == 1
