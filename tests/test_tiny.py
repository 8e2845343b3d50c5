"""`janus-ft tiny DIR --llm narrow`: the tiny Janus with its language model widened (the packing
benchmark's model, scripts/bench_packing.py), loadable with plain transformers."""

import json

from transformers import JanusConfig

from janus_ft.cli import main


def test_tiny_with_a_narrow_llm(tmp_path, capsys):
    assert main(["tiny", str(tmp_path / "m"), "--llm", "narrow"]) == 0
    assert "narrow LLM" in capsys.readouterr().out
    text = JanusConfig.from_pretrained(tmp_path / "m").text_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.intermediate_size) == (256, 4, 4, 704)
    assert text.hidden_size // text.num_attention_heads == 64   # Janus's head dim
    assert json.loads((tmp_path / "m" / "janus_ft_tiny.json").read_text())["llm"] == "narrow"
