"""`janus-ft data check/preview`: bad input -> one clear message with file:line and field, exit 2."""

import json
from pathlib import Path

import pytest
from conftest import write_jsonl
from PIL import Image

from janus_ft.cli import main

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def img(tmp_path):
    Image.new("RGB", (32, 48), (255, 0, 0)).save(tmp_path / "ok.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return tmp_path


@pytest.mark.parametrize("line,needle", [
    ('{"query": "q", "response": "r"', "bad.jsonl:2: malformed JSON"),
    ({"query": "<image>q", "response": "r", "images": ["missing.png"]}, "bad.jsonl:2: field 'images[0]': image not found"),
    ({"query": "<image>q", "response": "r", "images": ["corrupt.png"]}, "bad.jsonl:2: field 'images[0]': cannot read image"),
    ({"query": "<image>q", "response": "r", "images": ["ok.png", "ok.png"]}, "field 'images': 2 image(s) given but 1"),
    ({"query": "q", "response": " "}, "bad.jsonl:2: field 'response': is empty"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "field 'messages[0].role': unknown role 'bot'"),
    ({"query": ["q"], "response": "r"}, "field 'query': expected a string"),
])
def test_check_reports_bad_records(img, capsys, line, needle, tiny_dir):
    path = write_jsonl(img / "bad.jsonl", [{"query": "fine", "response": "yes"}, line])
    assert main(["data", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert "1 bad record(s)" in err


def test_check_counts_tasks_and_lengths(img, capsys, tiny_dir):
    path = write_jsonl(img / "good.jsonl", [
        {"query": "<image>What colour?", "response": "red", "images": ["ok.png"]},
        {"query": "a red square", "response": "<image>", "images": ["ok.png"]},
        {"query": "hi", "response": "hello"},
        {"query": "hi " * 400, "response": "long"},
    ])
    assert main(["data", "check", str(path), "--model", str(tiny_dir), "--max-length", "256"]) == 0
    out = capsys.readouterr().out
    assert "4 valid record(s): understanding 1, text 2, generation 1" in out
    assert "1 record(s) longer than 256 tokens will be dropped, not truncated" in out
    assert "VQ code cache: 0 of 1 generation image(s) cached" in out


def test_preview_json_and_marked_text(img, capsys, tiny_dir):
    path = write_jsonl(img / "p.jsonl", [{"query": "Hi", "response": "Hello", "system": ""}])
    assert main(["data", "preview", str(path), "--model", str(tiny_dir), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["task"] == "text" and row["text"] == "<|User|>: Hi\n\n<|Assistant|>: Hello<｜end▁of▁sentence｜>"
    assert len(row["input_ids"]) == len(row["labels"])
    assert main(["data", "preview", str(path), "--model", str(tiny_dir), "--no-color"]) == 0
    assert "<|Assistant|>:[[ Hello<｜end▁of▁sentence｜>]]" in capsys.readouterr().out
    assert main(["data", "preview", str(path), "--model", str(tiny_dir), "--format", "janus", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["text"].startswith("User: Hi\n\nAssistant: Hello")


def test_missing_model_is_a_clear_error(img, capsys):
    path = write_jsonl(img / "p.jsonl", [{"query": "Hi", "response": "Hello"}])
    assert main(["data", "preview", str(path), "--model", str(img / "nope")]) == 2
    assert f"model path '{img / 'nope'}': no such directory" in capsys.readouterr().err
    assert main(["data", "preview", str(path), "--model", str(img)]) == 2   # a directory, but no checkpoint
    assert "cannot load a Janus processor" in capsys.readouterr().err


def test_a_hub_id_off_line_fails_at_once_or_loads_from_the_hub_cache(tmp_path, monkeypatch):
    """A model path that is no local directory is a hub id; with the hub out of reach it is read
    from the hub cache, or refused with the reason -- not after minutes of retried downloads."""
    from huggingface_hub import constants

    from janus_ft.errors import UserError
    from janus_ft.model import loading

    # Whatever the user's environment says (HF_HUB_OFFLINE=1 is common on clusters): on line first.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(UserError, match="'runs/tiny-colour': no such local directory, and the Hugging Face hub"):
        loading.hub_model("runs/tiny-colour", cache_dir=str(tmp_path))
    snapshot = tmp_path / "models--org--janus" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--org--janus" / "refs").mkdir()
    (tmp_path / "models--org--janus" / "refs" / "main").write_text("abc123")
    assert loading.hub_model("org/janus", cache_dir=str(tmp_path)) == str(snapshot)
    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: True)
    assert loading.hub_model("org/janus", cache_dir=str(tmp_path)) == "org/janus"   # on line: the hub decides
    # HF_HUB_OFFLINE=1: no probe; transformers reads its cache and says itself what is missing.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: pytest.fail("probed the hub off line"))
    assert loading.hub_model("runs/tiny-colour", cache_dir=str(tmp_path)) == "runs/tiny-colour"


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file_is_bad_input(tmp_path, capsys, content):
    """A file with no records (empty, or only blank lines) cannot be trained on: exit 2 naming it,
    in `data check` and in `sft` (before any weight loads)."""
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    assert main(["data", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: no records: the file is empty or holds only blank lines" in err and "Traceback" not in err
    assert main(["sft", "--recipe", str(REPO / "recipes/demo.yaml"), f"data.train=[{{path: {path}}}]",
                 f"output_dir={tmp_path / 'out'}"]) == 2
    assert f"{path}: no records" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text,column", [
    ('{"query": "broken", ', 21),          # cut short: where the line ends, not column 1
    ('{"query": "broken", \r', 21),
    ('{"query": "q" "response": "r"}', 15),
    ('{"query": "q", "response": "r"} x', 33),
])
def test_malformed_json_names_the_column(tmp_path, capsys, text, column):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"query": "fine", "response": "yes"}\n' + text + "\n")
    assert main(["data", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2: malformed JSON (" in err and f"at column {column})" in err, err


def test_preview_with_recipe_shows_what_it_trains_on(tmp_path, capsys, caplog, tiny_dir, tiny_processor):
    """`--recipe`: the recipe's system prompt, last-turn-only supervision and length limit, token for
    token what `janus-ft sft` builds from the same records; `--system-prompt` overrides the prompt."""
    import logging

    import yaml

    from janus_ft.data.dataset import build_datasets, read_sources
    from janus_ft.recipe import load_recipe

    data = write_jsonl(tmp_path / "t.jsonl", [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                      {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Ciao"}]},
        {"query": "Who?", "response": "Me", "system": "Own prompt."},
        {"query": "long " * 300, "response": "x"},
    ])
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(yaml.safe_dump({
        "model": {"path": str(tiny_dir)}, "data": {"train": [{"path": str(data)}], "mix": {"text": 1},
                                                   "system_prompt": "Answer briefly.", "last_turn_only": True,
                                                   "max_length": 128}}))
    assert main(["data", "preview", "--recipe", str(recipe_path), "--json"]) == 0
    out = capsys.readouterr()
    rows = [json.loads(line) for line in out.out.splitlines()]
    assert [r["text"] for r in rows] == [
        "Answer briefly.\n\n<|User|>: Hi\n\n<|Assistant|>: Hello<｜end▁of▁sentence｜><|User|>: Bye\n\n"
        "<|Assistant|>: Ciao<｜end▁of▁sentence｜>",
        "Own prompt.\n\n<|User|>: Who?\n\n<|Assistant|>: Me<｜end▁of▁sentence｜>"]
    assert f"{data}:3 (text) dropped: longer than data.max_length=128 tokens" in out.err
    recipe = load_recipe(recipe_path)
    with caplog.at_level(logging.WARNING, logger="janus_ft"):
        trained = build_datasets(read_sources(recipe.data.train), None, tiny_processor, recipe, "janus-pro")["text"]
    assert "dropped 1 text record(s)" in caplog.text   # sft drops the long one too
    capsys.readouterr()   # (the same warning, shown on the console by the janus-ft handler)
    assert [(r["input_ids"], r["labels"]) for r in rows] == [(e.input_ids, e.labels) for e in trained.examples]
    tok = tiny_processor.tokenizer
    assert tok.decode([t for t in rows[0]["labels"] if t != -100]) == " Ciao<｜end▁of▁sentence｜>"   # last turn only

    assert main(["data", "preview", str(data), "--recipe", str(recipe_path), "--system-prompt", "", "--json",
                 "--limit", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["text"].startswith("<|User|>: Hi\n\n")
    assert main(["data", "preview", str(data), "--model", str(tiny_dir), "--json", "--limit", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["text"].startswith("You are a helpful language and vision assistant.")


def test_check_and_preview_read_a_dpo_recipes_pairs(tmp_path, capsys, tiny_dir):
    """A recipe with a `dpo:` section is checked and previewed as preference pairs (it listed every
    valid pair as a bad SFT record); every bad pair is listed with line and field."""
    assert main(["data", "check", "--recipe", str(REPO / "recipes/dpo_mixed.yaml")]) == 0
    out = capsys.readouterr().out
    assert "160 valid pair(s): understanding 60, text 40, generation 60" in out
    bad = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": "Which?", "chosen": "red", "rejected": "blue"},
        {"prompt": "Which?", "chosen": "red"},
        {"prompt": "<image>Which?", "images": ["missing.png"], "chosen": "red", "rejected": "blue"}])
    assert main(["data", "check", "--as", "dpo", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "pairs.jsonl:2: field 'rejected'" in err and "pairs.jsonl:3: field 'images[0]': image not found" in err
    assert "2 bad pair(s)" in err
    good = write_jsonl(tmp_path / "good.jsonl", [{"prompt": "Which?", "chosen": "red", "rejected": "blue"}])
    assert main(["data", "preview", str(good), "--as", "dpo", "--no-color"]) == 0
    out = capsys.readouterr().out
    assert "good.jsonl:1 (text, chosen, " in out and "good.jsonl:1 (text, rejected, " in out
    assert ":[[ red<｜end▁of▁sentence｜>]]" in out and ":[[ blue<｜end▁of▁sentence｜>]]" in out


def test_check_and_preview_read_a_grpo_recipes_prompts(tmp_path, capsys, tiny_dir):
    """A recipe with a `grpo:` section: prompts (no answer needed), shown as the policy sees them,
    with the fields its rewards receive."""
    assert main(["data", "check", "--recipe", str(REPO / "recipes/grpo_format.yaml")]) == 0
    assert "16 valid prompt(s): understanding 16" in capsys.readouterr().out
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"query": "Say red.", "solution": "red"}, {"solution": "red"}])
    assert main(["data", "check", "--as", "grpo", str(prompts)]) == 2
    assert "prompts.jsonl:2" in capsys.readouterr().err
    one = write_jsonl(tmp_path / "one.jsonl", [{"query": "Say red.", "solution": "red"}])
    assert main(["data", "preview", str(one), "--as", "grpo", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["text"].endswith("Say red.\n\n<|Assistant|>:") and row["fields"] == {"solution": "red"}
