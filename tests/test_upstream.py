"""The private upstream APIs janus_ft relies on (janus_ft.train.upstream) still look as it expects.

If one of these fails after an upgrade of transformers, TRL or accelerate, the message names what
changed; fix `janus_ft/train/upstream.py`, not the call sites."""

import inspect


def _params(func) -> list[str]:
    return list(inspect.signature(func).parameters)


def test_trainer_checkpoint_hooks():
    from transformers import Trainer

    assert _params(Trainer._save_checkpoint) == ["self", "model", "trial"], "Trainer._save_checkpoint changed"
    assert _params(Trainer._get_output_dir) == ["self", "trial"], "Trainer._get_output_dir changed"
    # The checkpoint is written under the directory `_get_output_dir` returns: staging relies on it.
    assert "_get_output_dir" in inspect.getsource(Trainer._save_checkpoint)


def test_trl_generation_unwrap():
    from trl.models.utils import unwrap_model_for_generation

    assert _params(unwrap_model_for_generation)[:3] == ["model", "accelerator", "gather_deepspeed3_params"]
    assert "gradient_checkpointing_kwargs" in _params(unwrap_model_for_generation)


def test_accelerate_state_reset():
    from accelerate.state import AcceleratorState

    assert "reset_partial_state" in _params(AcceleratorState._reset_state)


def test_every_trainer_uses_the_atomic_checkpoints():
    from janus_ft.train.dpo import DpoTrainer
    from janus_ft.train.grpo_trainer import GrpoTrainer
    from janus_ft.train.sft import SftTrainer
    from janus_ft.train.upstream import AtomicCheckpoints

    for trainer in (SftTrainer, DpoTrainer, GrpoTrainer):
        assert trainer._save_checkpoint is AtomicCheckpoints._save_checkpoint
        assert trainer._get_output_dir is AtomicCheckpoints._get_output_dir
