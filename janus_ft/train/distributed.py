"""Processes: who trains together, and on what device -- the setup `torchrun` / `accelerate launch`
leave to the program, done the way the Trainer will find it.

janus_ft runs no engine of its own (DDP, DeepSpeed and FSDP are the Trainer's); this module only
makes CPU ranks form a real process group, hands DeepSpeed its state there, refuses FSDP where
accelerate cannot run it, puts the VQ encoder on the GPU while the code cache is filled, and lets
the main process alone decide about shared files while the others wait for its verdict.
"""

from __future__ import annotations

import os

from ..errors import RecipeError, UserError


def on_main_process(decide):
    """`decide()` run by the main process alone; every rank returns its result, or raises its
    UserError with the same message.

    The other ranks wait in the broadcast while the main process works, so none of them looks at
    files it is writing (a second rank listing a new output_dir saw the main process's write probe
    and refused the directory, taking the whole launch down). And when the main process refuses,
    every rank stops with its message and exit code instead of waiting at a barrier for a process
    that has left. Anything else the main process raises is a bug: it shows its traceback and the
    launcher ends the others.
    """
    state = distributed_state()
    outcome = [None, None]   # [result, UserError]
    if state.is_main_process:
        try:
            outcome[0] = decide()
        except UserError as err:
            outcome[1] = err
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(outcome, from_process=0)
    if outcome[1] is not None:
        raise outcome[1]
    return outcome[0]


def process_lost(err: Exception) -> bool:
    """Whether `err` is a collective failing because another rank is gone: NCCL and the process
    group's store raise torch's DistError, gloo a plain RuntimeError from its TCP transport."""
    import torch.distributed as dist

    return isinstance(err, dist.DistError) or "gloo/transport" in str(err)


def end_processes() -> None:
    """Leave the process group before the interpreter exits (accelerate's `end_training` does the
    same). Left to interpreter shutdown, gloo's worker threads can be torn down while still joinable
    and abort the process ("terminate called without an active exception") after a run that
    finished and saved: measured in 1 of 4 two-rank runs."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    """Processes training together (torchrun / accelerate launch), from the process group itself."""
    return distributed_state().num_processes


def distributed_state():
    """accelerate's state of this process (rank, main process), set up as the Trainer will set it.

    Under torchrun / `accelerate launch` on a machine without a GPU, accelerate forms a process group
    of CPU ranks (gloo) only when told to use the CPU; otherwise every rank trains alone on the
    whole schedule and encodes the VQ cache itself. `ACCELERATE_USE_CPU` is what TrainingArguments
    reads (`accelerate launch` sets it to False unless given --cpu, which cannot spawn processes).
    """
    from accelerate import PartialState

    cpu = _cpu_ranks()
    if cpu:
        os.environ["ACCELERATE_USE_CPU"] = "true"
    return PartialState(cpu=cpu)


def _cpu_ranks() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not has_accelerator()


def distributed_fields(train) -> dict:
    """SFTConfig fields a launch on CPU ranks needs (none elsewhere): DeepSpeed's state, made here.

    accelerate enters DeepSpeed only off the CPU, and TrainingArguments starts DeepSpeed's process
    group without naming a backend, which on a machine without a GPU leaves every rank believing it
    is alone. So the state is rebuilt as DeepSpeed over gloo (DeepSpeed's CPU accelerator supports
    it) and the Trainer told to use it as configured. FSDP has no such path: refuse it rather than
    let accelerate fall back to DDP without a word.
    """
    if not _cpu_ranks():
        return {}
    if train.extra.get("fsdp") or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        raise RecipeError("FSDP needs GPUs: accelerate runs it only on GPU (or XPU/NPU/HPU) ranks. On CPU "
                          "use DDP, or DeepSpeed ZeRO-3 to shard (train.deepspeed=recipes/deepspeed/zero3.json)")
    if not train.deepspeed:
        return {}
    from accelerate.state import PartialState

    from .upstream import reset_accelerate_state

    reset_accelerate_state()
    os.environ["ACCELERATE_USE_CPU"] = "false"
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(backend="gloo")
    return {"accelerator_config": {"use_configured_state": True}}


def has_accelerator() -> bool:
    import torch
    return torch.cuda.is_available()
