"""`janus-ft bench --interleave`: janus-ft and its variants in one process, a step of each in turn
on the same batch (see `janus_ft.bench.run`)."""

from __future__ import annotations

import copy
import tempfile
import time

from ..train.run import apply_levers
from .setup import BASELINE, Setup, prepare, release_memory, schedule


def bench_interleaved(recipes: dict, variants: list[str], setup: Setup | None, steps: int, warmup: int,
                      peak: float) -> list[dict]:
    """janus-ft and the other variants in this process, a step of each in turn on the same batch
    (see the module docstring): the variants' steps k run right before or right after janus-ft's
    step k, in the order `turn_orders` drew, and their time is taken out of janus-ft's step."""
    from .loops import trainer_loop
    from .throughput import PeakMemory, summarize

    setup = setup or Setup(recipes[BASELINE])
    n_steps = warmup + steps
    with tempfile.TemporaryDirectory(prefix="janus-ft-bench-") as out:
        base = copy.deepcopy(recipes[BASELINE])
        base.output_dir = out
        model, mixture, collator, args, timer = prepare(base, setup, n_steps, levers=False)
        # Each variant's model: its own trainable weights (the same initial values), the frozen ones
        # shared -- they never change, and one copy of them keeps a 1B pair within memory and puts
        # every variant on the very same weights in the caches. Copied before any variant's
        # attention or compilation is set, which each then sets on its own copy.
        frozen = {id(p): p for p in model.parameters() if not p.requires_grad}
        guests = {name: guest(name, copy.deepcopy(model, memo=dict(frozen)), recipes, setup, f"{out}/{i}", n_steps)
                  for i, name in enumerate(variants[1:])}
        apply_levers(model, base)
        orders = [variants] * warmup + turn_orders(variants, steps, base.train.seed)
        memory = PeakMemory(args.device)

        def between(before_step: bool, step: int) -> None:
            order = orders[step]
            mine = order.index(BASELINE)
            for name in order[:mine] if before_step else order[mine + 1:]:
                wall, cpu = timer.now(), time.process_time()
                guests[name].step()
                timer.exclude(timer.now() - wall, time.process_time() - cpu)

        try:
            trainer_loop(model, mixture, collator, args, setup.processor, timer, between=between,
                         head_chunk_size=base.model.head_chunk_size)
        finally:
            for g in guests.values():
                getattr(g, "finish", lambda: None)()
        timers = {BASELINE: timer} | {name: g.timer for name, g in guests.items()}
        shared = memory.read()
        results = []
        for name, t in timers.items():
            for step, entry in enumerate(t.steps):
                entry["order"] = orders[step]
            results.append(summarize(name, t.steps[warmup:], peak, shared))
    guests.clear()   # they hold the copies
    del model
    release_memory()
    return results


def guest(name: str, model, recipes: dict, setup: Setup, out: str, n_steps: int):
    """A variant that takes its steps when janus-ft's trainer calls it: the bare loop (on the
    baseline's recipe), or another janus-ft trainer (an override variant's recipe)."""
    from .loops import BareLoop, TrainerTurns, trainer_loop
    from .throughput import FlopModel, StepTimer

    recipe = copy.deepcopy(recipes.get(name, recipes[BASELINE]))
    recipe.output_dir = out
    recipe.train.extra = {**recipe.train.extra, "save_strategy": "no"}
    recipe.train.max_steps = n_steps
    mixture, collator, args = schedule(recipe, setup, model, n_steps)
    apply_levers(model, recipe)
    timer = StepTimer(FlopModel.of(model), args.device)
    if name == "bare":
        return BareLoop(model, mixture, collator, args, n_steps, timer, recipe.model.head_chunk_size)
    return TrainerTurns(lambda between: trainer_loop(model, mixture, collator, args, setup.processor, timer,
                                                     between=between, head_chunk_size=recipe.model.head_chunk_size),
                        timer)


def turn_orders(variants: list[str], n_steps: int, seed: int) -> list[list[str]]:
    """The order the variants run in, per step: every ordering of them equally often (as far as
    `n_steps` allows), shuffled with `seed`, so each variant goes before and after each other one
    half the time, and no periodic pattern of the data (a 1:1 mix at batch 1 alternates tasks
    every step) always meets the same order.

    >>> orders = turn_orders(["a", "b"], 10, seed=0)
    >>> sum(o == ["b", "a"] for o in orders), len(orders), orders == turn_orders(["a", "b"], 10, seed=0)
    (5, 10, True)
    >>> orders = turn_orders(["a", "b", "c"], 12, seed=0)
    >>> sum(o.index("a") < o.index("c") for o in orders), sum(o[0] == "b" for o in orders)
    (6, 4)
    """
    import itertools
    import random

    every = [list(p) for p in itertools.permutations(variants)]
    rng = random.Random(seed)
    orders = []
    while len(orders) < n_steps:
        block = [list(p) for p in every]
        rng.shuffle(block)
        orders += block
    return orders[:n_steps]
