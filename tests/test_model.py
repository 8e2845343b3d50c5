"""LoRA scope by component: exactly the named components train, everything else is frozen."""

import re

import pytest
from peft import PeftModel

from janus_ft.model import COMPONENT_PATHS, apply_lora, trainable_table
from janus_ft.recipe import LoraArgs


def expected_lora(model, components):
    """Independent reference: Linear layers under each component (the embedding table for gen_embed)."""
    import torch.nn as nn
    names = set()
    for comp in components:
        prefix = COMPONENT_PATHS[comp]
        for name, mod in model.named_modules():
            if (name == prefix or name.startswith(prefix + ".")) and isinstance(mod, (nn.Linear, nn.Embedding)):
                if isinstance(mod, nn.Embedding) and name != prefix:
                    continue
                names.add(name)
    return names


@pytest.mark.parametrize("targets,full", [
    (["llm", "aligner"], []),
    (["vision"], []),
    (["gen_head", "gen_aligner", "gen_embed"], []),
    (["llm"], ["gen_head"]),
    (["llm", "aligner", "vision", "gen_head", "gen_aligner", "gen_embed"], []),
    (["aligner"], ["vision"]),
])
def test_trainable_parameters_are_exactly_the_selection(tiny_model, targets, full):
    want_lora = expected_lora(tiny_model, targets)
    peft_model = apply_lora(tiny_model, LoraArgs(targets=targets, modules_to_save=full))
    assert isinstance(peft_model, PeftModel)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    lora_modules = {re.sub(r"^base_model\.model\.|\.lora_\w+\.default(\.weight)?$", "", n)
                    for n in trainable if ".lora_" in n}
    assert lora_modules == want_lora
    full_params = {n for n in trainable if ".lora_" not in n}
    assert all(".modules_to_save.default." in n for n in full_params)
    assert {next(c for c in full if f".{COMPONENT_PATHS[c]}.modules_to_save" in n) for n in full_params} == set(full)
    assert not any("vqmodel" in n for n in trainable)
    table = trainable_table(peft_model)
    assert "vq" in table and "all" in table
