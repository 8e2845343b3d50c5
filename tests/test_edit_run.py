"""Image editing through the commands: the edit generator, `data check` / `preview`, a mixed
understanding + generation + edit run of `janus-ft sft`, `janus-ft generate --image` and
`janus-ft eval`, on the tiny model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import write_jsonl
from PIL import Image, ImageOps

from janus_ft.cli import main

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "data_templates" / "samples"
sys.path.insert(0, str(REPO / "data_templates"))

from make_edits import Thing, draw, edits, make_edits, mirrored  # noqa: E402

BACKGROUND = (211, 211, 211)


@pytest.fixture(scope="module")
def edit_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("edits")
    make_edits(out, n=60, seed=0, n_val=6)
    return out


def cells(image: Image.Image, grid: int = 4) -> dict:
    """(col, row) -> the colour of each cell holding a shape (its centre pixel)."""
    side = image.width // grid
    out = {}
    for col in range(grid):
        for row in range(grid):
            pixel = image.getpixel((col * side + side // 2, row * side + side * 3 // 4))
            if pixel != BACKGROUND:
                out[(col, row)] = pixel
    return out


def test_generator_writes_distinct_edits_whose_targets_follow_the_instruction(edit_data, tmp_path):
    train, val = ([json.loads(line) for line in (edit_data / f).read_text().splitlines()] for f in ("train.jsonl", "val.jsonl"))
    assert (len(train), len(val)) == (54, 6)
    pairs = [(r["query"], *r["images"]) for r in train + val]
    assert len({(q, s) for q, s, _ in pairs}) == 60   # no edit twice: the val edits are unseen
    assert {q.split()[0] for q, *_ in pairs} == {"<image>Make", "<image>Move", "<image>Mirror"}
    for query, source, target in pairs:
        before, after = (Image.open(edit_data / p).convert("RGB") for p in (source, target))
        was, now = cells(before), cells(after)
        assert len(was) == len(now) == 2
        if query == "<image>Mirror the image.":
            assert after.tobytes() == ImageOps.mirror(before).tobytes()
        elif query.startswith("<image>Move"):   # one shape one cell on, in its colour; the other kept
            assert len(set(was.items()) - set(now.items())) == 1 and sorted(was.values()) == sorted(now.values())
        else:   # recoloured in place
            assert was.keys() == now.keys() and sum(was[c] != now[c] for c in was) == 1
    again = tmp_path / "again"
    make_edits(again, n=60, seed=0, n_val=6)
    assert (again / "train.jsonl").read_bytes() == (edit_data / "train.jsonl").read_bytes()
    scene = (Thing("square", "red", 0, 0), Thing("triangle", "blue", 3, 1, "left"))
    assert draw(mirrored(scene), 64).tobytes() == ImageOps.mirror(draw(scene, 64)).tobytes()
    assert ("Move the square left.", scene) not in edits(scene)   # no room on the left
    assert len([i for i, _ in edits(scene) if i.startswith("Make")]) == 6 and len(edits(scene)) == 6 + 5 + 1
    with pytest.raises(ValueError, match="objects"):
        make_edits(tmp_path / "bad", n=4, objects=4)


def test_data_check_and_preview_show_edits(edit_data, tmp_path, capsys, tiny_dir):
    assert main(["data", "check", str(edit_data / "val.jsonl"), "--model", str(tiny_dir)]) == 0
    out = capsys.readouterr().out
    assert "6 valid record(s): understanding 0, text 0, generation 0, edit 6" in out
    assert "generation image(s) cached" in out
    first = json.loads((edit_data / "val.jsonl").read_text().splitlines()[0])
    path = write_jsonl(edit_data / "one.jsonl", [first])
    assert main(["data", "preview", str(path), "--no-color"]) == 0
    shown = capsys.readouterr().out
    instruction = first["query"].removeprefix("<image>")
    assert (f"<|User|>: <begin_of_image><image_placeholder>x16<end_of_image>\n{instruction}\n\n<|Assistant|>:"
            "<begin_of_image>[[<image_placeholder>x16 (image codes)]]<end_of_image>") in shown
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"path": str(tiny_dir)},
                                      "data": {"train": [{"path": str(path)}], "edit_source_codes": True}}))
    assert main(["data", "preview", "--recipe", str(recipe), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["task"] == "edit" and len(row["input_ids"]) == len(row["labels"]) == len(row["source_codes"])
    assert sum(c != -100 for c in row["source_codes"]) == 16   # one source's code block
    assert main(["data", "preview", "--recipe", str(recipe), "--no-color"]) == 0
    assert "<image_placeholder>x16 (source codes)" in capsys.readouterr().out
    assert main(["data", "check", "--recipe", str(recipe)]) == 0   # lengths count the code blocks
    n = len(row["input_ids"])
    assert f"lengths after image expansion: min {n}, median {n}, max {n} tokens" in capsys.readouterr().out


@pytest.fixture(scope="module")
def mixed_run(edit_data, tmp_path_factory, tiny_dir) -> Path:
    out = tmp_path_factory.mktemp("run") / "mixed"
    recipe = out.parent / "mixed.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": str(tiny_dir)},
        "data": {"train": [{"path": str(SAMPLES / "understanding.jsonl")}, {"path": str(SAMPLES / "generation.jsonl")},
                           {"path": str(edit_data / "train.jsonl")}],
                 "val": [{"path": str(SAMPLES / "generation_val.jsonl")}, {"path": str(edit_data / "val.jsonl")}],
                 "mix": {"understanding": 2, "generation": 1, "edit": 1}, "max_length": 256,
                 "edit_source_codes": True, "code_cache": str(out.parent / "codes")},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "targets": ["llm", "aligner", "gen_head", "gen_aligner"]},
        "train": {"max_steps": 4, "per_device_train_batch_size": 4, "logging_steps": 2, "eval_steps": 4,
                  "eval_images": 2, "save_steps": 100, "disable_tqdm": True},
        "output_dir": str(out)}))
    assert main(["sft", "--recipe", str(recipe)]) == 0
    return out


def test_a_mixed_run_trains_and_evaluates_every_task_at_its_ratio(mixed_run):
    mixture = json.loads((mixed_run / "mixture.json").read_text())
    assert mixture["consumed"] == {"understanding": 8, "text": 0, "generation": 4, "edit": 4}
    assert mixture["ratios"] == {"understanding": 2, "generation": 1, "edit": 1}
    log = json.loads((mixed_run / "trainer_state.json").read_text())["log_history"]
    train = [e for e in log if "loss" in e]
    assert all(k in train[-1] for k in ("loss_understanding", "loss_generation", "loss_edit"))
    evaluation = next(e for e in log if "eval_loss_edit" in e)
    assert 0 < evaluation["eval_loss_edit"] < 10 and "eval_loss_generation" in evaluation
    assert "eval_edit_exact_match" not in evaluation   # edits are drawn, not answered
    # the probe's grid: 2 captions (references over samples), then 2 edit rows (source | target | result)
    grid = Image.open(mixed_run / "samples" / "step-4.png")
    assert grid.size == (3 * 64 + 2 * 2, (2 * 64 + 2) + 6 + (2 * 64 + 2))
    assert yaml.safe_load((mixed_run / "recipe.yaml").read_text())["data"]["edit_source_codes"] is True


def test_generate_with_images_edits_and_writes_a_source_result_grid(mixed_run, edit_data, tmp_path):
    from janus_ft import Janus
    from janus_ft.data.vq import decode_codes_to_pil
    from janus_ft.infer.generate import sample_edit_codes

    source = edit_data / json.loads((edit_data / "val.jsonl").read_text().splitlines()[0])["images"][0]
    out = tmp_path / "out"
    assert main(["generate", "--adapter", str(mixed_run), "--image", str(source), "--prompt", "Make the square red.",
                 "--output", str(out), "--n", "2", "--seed", "3", "--image-cfg", "1.5"]) == 0
    meta = json.loads((out / "codes.json").read_text())
    assert meta["source_codes"] is True and meta["images"] == [str(source)]   # as the run trained (recipe.yaml)
    janus = Janus.load(adapter=str(mixed_run))
    with janus.using() as model:
        codes = sample_edit_codes(model, janus.processor(), "Make the square red.", [source], "janus-pro", n=2, seed=3,
                                  image_cfg=1.5, source_codes=True)
    assert meta["codes"] == codes.tolist()
    # the Python API draws the same edits (source codes as the adapter's run trained them)
    drawn = janus.draw("Make the square red.", n=2, seed=3, images=[source], image_cfg=1.5)
    assert [im.tobytes() for im in drawn] == [Image.open(out / f"{i}.png").tobytes() for i in range(2)]
    for i, image in enumerate(decode_codes_to_pil(model, codes)):
        assert Image.open(out / f"{i}.png").tobytes() == image.tobytes()
    grid = Image.open(out / "grid.png")
    assert grid.size == (3 * 64 + 2 * 2, 64)
    assert grid.crop((0, 0, 64, 64)).tobytes() == Image.open(source).convert("RGB").tobytes()
    assert grid.crop((66, 0, 130, 64)).tobytes() == Image.open(out / "0.png").tobytes()


@pytest.mark.parametrize("args,message", [
    (["--image", "missing.png"], "--image missing.png: no such file"),
    (["--image", "{source}", "--image", "{source}", "--prompt", "<image>Make it red"],
     "2 source image(s) given but 1 <image> tag(s) in the prompt"),
    (["--image", "{source}", "--image-cfg", "-1"], "--image-cfg must be >= 0"),
])
def test_generate_edit_errors_exit_2(args, message, edit_data, tmp_path, capsys, tiny_dir):
    source = str(edit_data / "images" / sorted(p.name for p in (edit_data / "images").iterdir())[0])
    args = [a.format(source=source) for a in args]
    if "--prompt" not in args:
        args += ["--prompt", "Make it red"]
    assert main(["generate", "--model", str(tiny_dir), "--output", str(tmp_path / "o"), *args]) == 2
    assert message in capsys.readouterr().err


def test_eval_reports_edit_loss_and_source_target_result_grids(mixed_run, edit_data, tmp_path):
    from janus_ft import Janus
    from janus_ft.data.collate import collate
    from janus_ft.data.dataset import build_datasets, read_sources
    from janus_ft.model.loss import compute_loss_parts
    from janus_ft.recipe import load_recipe

    out = tmp_path / "eval"
    assert main(["eval", "--recipe", str(mixed_run / "recipe.yaml"), "--adapter", str(mixed_run),
                 "--data", str(edit_data / "val.jsonl"), "--output", str(out), "--compare-base"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["records"] == {"edit": 6}
    # the adapter's edit loss: NLL per target code of the held-out edits, sources as the run trained them
    recipe = load_recipe(mixed_run / "recipe.yaml")
    janus = Janus.load(adapter=str(mixed_run))
    model, processor = janus.model, janus.processor()
    (ds,) = build_datasets(read_sources([str(edit_data / "val.jsonl")]), model, processor, recipe, "janus-pro").values()
    assert "source_codes" in ds[0]
    with torch.no_grad():
        parts = compute_loss_parts(model, collate([ds[i] for i in range(len(ds))], processor.tokenizer.pad_token_id))
    assert report["results"]["adapter"]["edit"]["loss"] == pytest.approx(float(parts.total) / parts.n_tokens, rel=1e-4)
    assert report["results"]["adapter"]["edit"]["tokens"] == 6 * 16
    for label in ("base", "adapter"):
        grid = Image.open(out / f"edits_{label}.png")
        assert grid.size == (3 * 64 + 2 * 2, 4 * 64 + 3 * 2)   # 4 edits: source | target | result
        assert report["edit_samples"][label]["captions"][0] == ds.examples[0].record.caption
    assert "edits (a row per edit: source | target | seed-fixed sample)" in (out / "eval.md").read_text()


def test_streaming_refuses_edits(edit_data, tmp_path, capsys, tiny_dir):
    base = ["--recipe", str(REPO / "recipes" / "demo.yaml"), f"model.path={tiny_dir}", f"output_dir={tmp_path / 'o'}",
            f"data.train=[{edit_data / 'train.jsonl'}]", "data.val=[]"]
    assert main(["sft", *base, "data.streaming=true", "data.mix={edit: 1}", "train.max_steps=1"]) == 2
    assert "data.streaming does not train edit records" in capsys.readouterr().err


@pytest.mark.parametrize("override,message", [
    ("data.edit_cfg_dropout=1.0", "data.edit_cfg_dropout must be in [0, 1)"),
    ("data.edit_source_code_dropout=-0.1", "data.edit_source_code_dropout must be in [0, 1)"),
    ("data.edit_uncond_dropout=0.6", "data.edit_cfg_dropout + data.edit_uncond_dropout must be below 1"),
])
def test_edit_recipe_keys_are_checked(override, message, capsys):
    extra = ["data.edit_cfg_dropout=0.5"] if "uncond" in override else []
    assert main(["sft", "--recipe", str(REPO / "recipes" / "demo.yaml"), override, *extra]) == 2
    assert message in capsys.readouterr().err
