"""Regional compilation: `torch.compile` on each decoder layer of the language model (`model.compile`).

Compiling the layers one by one instead of the whole model is what torchtune's `compile_model` and
PyTorch's regional-compilation recipe do: every layer has the same code, so one graph serves all of
them and compiling costs one layer's time; the LoRA layers inside are traced with it; everything
around the layers (the embedding hooks of `janus_ft.model.loss`, the vision tower, the heads,
the loss) stays eager, where its per-batch index work costs nothing to trace.
https://pytorch.org/tutorials/recipes/regional_compilation.html

Shapes are left to dynamo's automatic dynamic shapes (`dynamic=None`): the first batch compiles
for its own sizes, and the first batch of another length compiles once more with that dimension
symbolic, so packed rows and mixed lengths reuse the graph instead of recompiling every step.
Per-sample attention on a CPU (`janus_ft.model.attention`) runs between two graphs of each layer:
it reads the samples' bounds as numbers.
"""

from __future__ import annotations

import types

import torch

from .loss import core_model

RECOMPILE_LIMIT = 64


def compile_layers(model, backend: str = "inductor", mode: str | None = None) -> int:
    """Compile each decoder layer of the language model of `model` (bare or wrapped by PEFT / DDP)
    in place; returns how many. Call it after LoRA is applied and the attention implementation is
    set (`janus_ft.model.attention.set_packed_attention`): a layer compiles at its first call and
    keeps what it found there."""
    layers = core_model(model).model.language_model.layers
    # The layer class's `forward`, compiled once and bound to each layer: not the module call
    # (`nn.Module.compile`), whose forward hooks would be traced too -- the hooks transformers puts
    # on every layer once anything asks for hidden states or attentions read a ContextVar that
    # dynamo cannot trace, a graph break in each layer. Bound per layer, a copy of the model
    # (`copy.deepcopy`) runs its own layers, where a compiled bound method would run the original's.
    compiled = torch.compile(type(layers[0]).forward, backend=backend, mode=mode, dynamic=None)
    # That one compiled forward keeps an entry per variant of its inputs (first layer's input with or
    # without gradient, one packed row or several, first lengths or symbolic ones, training or
    # evaluation, adapter on or off for a reference pass): more than dynamo's default of 8, past
    # which it silently runs every further variant eagerly.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    for layer in layers:
        layer.forward = types.MethodType(compiled, layer)
    return len(layers)


def compiled_layers(model) -> int:
    """How many decoder layers of `model`'s language model are compiled."""
    layers = core_model(model).model.language_model.layers
    return sum("forward" in vars(layer) for layer in layers)
