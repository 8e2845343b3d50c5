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


def test_trl_metric_store():
    from trl import SFTTrainer

    assert "self._metrics = " in inspect.getsource(SFTTrainer.__init__), "SFTTrainer no longer has _metrics"
    assert "self._metrics[mode]" in inspect.getsource(SFTTrainer.log), "SFTTrainer.log no longer logs _metrics"


def test_accelerate_state_reset():
    from accelerate.state import AcceleratorState

    assert "reset_partial_state" in _params(AcceleratorState._reset_state)


def test_janus_trainer_uses_the_atomic_checkpoints():
    from janus_ft.train.trainer import JanusTrainer
    from janus_ft.train.upstream import AtomicCheckpoints

    assert JanusTrainer._save_checkpoint is AtomicCheckpoints._save_checkpoint
    assert JanusTrainer._get_output_dir is AtomicCheckpoints._get_output_dir
