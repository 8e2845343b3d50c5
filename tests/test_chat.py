"""janus_ft.infer.chat / janus_ft.infer.prompts: answers equal plain transformers `generate()` on prompts built
independently with the processor's chat template; an adapter answers like its merged model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import random_adapter
from PIL import Image

from janus_ft.cli import main
from janus_ft.errors import UserError
from janus_ft.infer.engine import Janus
from janus_ft.infer.prompts import build_prompt
from janus_ft.model.loading import adapter_base

SAMPLES = Path(__file__).resolve().parent.parent / "data_templates" / "samples"
IMAGE = SAMPLES / "images" / "shape_0049.png"
QUESTION = "What colour is the shape?"
NEW_TOKENS = 6



@pytest.fixture(scope="session")
def adapter(tiny_dir, tiny_base, tmp_path_factory) -> Path:
    """A LoRA adapter with random non-zero weights."""
    out = random_adapter(tiny_dir, ["llm", "aligner"], tmp_path_factory.mktemp("adapter"), seed=1)
    tiny_base[1].save_pretrained(out)  # as `janus-ft sft` does
    return out


def _reference_answer(model, processor, content: list[dict], history=(), images=()) -> str:
    """Greedy answer via the processor's own chat template (which prepends the default system prompt)."""
    messages = []
    for user, assistant in history:
        messages += [{"role": "user", "content": [{"type": "text", "text": user}]},
                     {"role": "assistant", "content": [{"type": "text", "text": assistant}]}]
    messages.append({"role": "user", "content": content})
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    kwargs = {"images": [Image.open(p).convert("RGB") for p in images]} if images else {}
    inputs = processor(text=text, return_tensors="pt", **kwargs)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    return processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def _image_content() -> list[dict]:
    return [{"type": "image"}, {"type": "text", "text": QUESTION}]


def test_build_prompt_matches_processor(tiny_base):
    model, processor = tiny_base
    messages = [{"role": "user", "content": _image_content()}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    expected = processor(text=text, images=[Image.open(IMAGE).convert("RGB")], return_tensors="pt")["input_ids"]
    for query in (f"<image>{QUESTION}", QUESTION):  # untagged images go first, as in the data layer
        got = build_prompt(processor, query, n_images=1)["input_ids"]
        assert got.tolist() == expected.tolist()
    assert (got == processor.tokenizer.convert_tokens_to_ids("<image_placeholder>")).sum() == 16


def test_build_prompt_system_and_image_count(tiny_base):
    _, processor = tiny_base
    no_system = build_prompt(processor, "hello", system="")["input_ids"][0].tolist()
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
                                         add_generation_prompt=True)
    assert no_system == processor.tokenizer(text)["input_ids"]
    with pytest.raises(UserError, match="2 image"):
        build_prompt(processor, "<image>hello", n_images=2)


def test_chat_streams_plain_generate_answer(tiny_base, tiny_dir, capsys):
    model, processor = tiny_base
    expected = _reference_answer(model, processor, _image_content(), images=[IMAGE])
    assert expected.strip()
    rc = main(["chat", "--model", str(tiny_dir), "--image", str(IMAGE), "--prompt", f"<image>{QUESTION}",
               "--max-new-tokens", str(NEW_TOKENS)])
    assert rc == 0
    assert capsys.readouterr().out == expected.lstrip() + "\n"  # the answer's opening space is not shown


def test_chat_adapter_equals_merged_model(tiny_base, tiny_dir, adapter, capsys):
    from peft import PeftModel
    from transformers import JanusForConditionalGeneration

    model, processor = tiny_base
    merged = PeftModel.from_pretrained(JanusForConditionalGeneration.from_pretrained(tiny_dir), adapter)
    merged = merged.merge_and_unload().eval()
    expected = _reference_answer(merged, processor, _image_content(), images=[IMAGE])
    assert expected != _reference_answer(model, processor, _image_content(), images=[IMAGE])
    # No --model: the base comes from adapter_config.json.
    assert adapter_base(adapter) == str(tiny_dir)
    rc = main(["chat", "--adapter", str(adapter), "--image", str(IMAGE), "--prompt", QUESTION,
               "--max-new-tokens", str(NEW_TOKENS), "--no-stream"])
    assert rc == 0
    assert capsys.readouterr().out == expected.strip() + "\n"


def test_chat_jsonl_answers_last_query_with_history(tiny_base, tiny_dir, tmp_path):
    model, processor = tiny_base
    history = [["What is 7 + 7?", "14"]]
    src = tmp_path / "in.jsonl"
    rows = [{"query": "What is 1 + 5?", "response": "6", "history": history},
            {"query": QUESTION, "response": "green", "images": [str(IMAGE)]},
            {"query": "a red circle", "response": "<image>", "images": [str(IMAGE)]}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    rc = main(["chat", "--model", str(tiny_dir), "--jsonl", str(src), "--output", str(out),
               "--max-new-tokens", str(NEW_TOKENS)])
    assert rc == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [{k: v for k, v in g.items() if k != "prediction"} for g in got] == rows
    text_expected = _reference_answer(model, processor, [{"type": "text", "text": rows[0]["query"]}], history)
    image_expected = _reference_answer(model, processor, _image_content(), images=[IMAGE])
    assert got[0]["prediction"] == text_expected.strip()
    assert got[1]["prediction"] == image_expected.strip()
    assert "prediction" not in got[2]  # generation records are for `janus-ft generate`


def test_sampling_is_seeded(tiny_dir, capsys):
    args = ["chat", "--model", str(tiny_dir), "--prompt", "hello", "--max-new-tokens", "8", "--no-stream",
            "--temperature", "1.5", "--seed"]
    outs = []
    for seed in ("3", "3"):
        assert main(args + [seed]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]


def test_chat_user_errors_exit_2(tiny_dir, tmp_path, capsys):
    assert main(["chat", "--model", str(tiny_dir)]) == 2
    assert "exactly one of --prompt" in capsys.readouterr().err
    assert main(["chat", "--adapter", str(tmp_path), "--prompt", "hi"]) == 2
    assert "adapter_config.json" in capsys.readouterr().err
    assert main(["chat", "--model", str(tiny_dir), "--prompt", "<image>hi"]) == 2
    assert "0 image(s) given but 1 <image> tag" in capsys.readouterr().err
    assert main(["chat", "--model", str(tiny_dir), "--image", str(tmp_path / "no.png"), "--prompt", "hi"]) == 2
    assert "no.png: file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "hi", "response": "yo"}\n{"query": "x"}\n')
    assert main(["chat", "--model", str(tiny_dir), "--jsonl", str(bad)]) == 2
    assert "bad.jsonl:2: field 'response'" in capsys.readouterr().err


def test_janus_load_prefers_the_adapter_processor(adapter):
    from peft import PeftModel

    janus = Janus.load(adapter=adapter)
    assert isinstance(janus.model, PeftModel) and not janus.model.training
    assert janus.active == adapter.name and janus.processor().num_image_tokens == 16
    assert janus.processor() is not janus.processor("base")


def test_batched_answers_equal_one_by_one(adapter):
    """Left-padded batches (text, image, multi-turn; different lengths) answer exactly as single
    prompts do, with an adapter so the answers are not trivially equal."""
    from janus_ft.infer.chat import Decoding, answer, answer_batch
    from janus_ft.infer.prompts import prompt_record

    janus = Janus.load(adapter=adapter)
    model, processor = janus.model, janus.processor()
    records = [prompt_record("hi"), prompt_record(QUESTION, 1), prompt_record("and 2 + 2?", history=[("1 + 1?", "2")]),
               prompt_record(f"<image>{QUESTION} And <image> this one?", 2)]
    records[1].images, records[3].images = [IMAGE], [IMAGE, SAMPLES / "images" / "shape_0001.png"]
    decoding = Decoding(max_new_tokens=12)
    single = [answer(model, processor, r, "janus-pro", decoding) for r in records]
    assert answer_batch(model, processor, records, "janus-pro", decoding) == single
    assert len(set(single)) > 1
