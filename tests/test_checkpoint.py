"""janus_ft.train.checkpoint and the trainer's guards: a run survives SIGKILL mid-save, SIGINT/SIGTERM save
and stop, a NaN stops (or is skipped) before it reaches the weights, a full disk keeps earlier
checkpoints, and an output_dir holding another run is never written into by mistake."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from janus_ft.cli import main
from janus_ft.errors import RecipeError
from janus_ft.train.checkpoint import STAGING, check_output_dir

REPO = Path(__file__).resolve().parent.parent
DEMO = str(REPO / "recipes/demo.yaml")
# Short demo runs: no validation, a checkpoint every 2 steps.
FAST = ["data.val=[]", "train.save_steps=2", "train.disable_tqdm=true", "train.logging_steps=1",
        "train.per_device_train_batch_size=2", "train.gradient_accumulation_steps=1", "data.cfg_dropout=0.0"]
CHECKPOINT_FILES = ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json")


def sft(*overrides) -> list[str]:
    return ["sft", "--recipe", DEMO, *FAST, *overrides]


def spawn(args: list[str], prelude: str = "") -> subprocess.Popen:
    """`janus-ft` in a child process (its own session, so signals reach it alone), optionally with
    test-only code run first (to simulate a crash at a precise point)."""
    code = prelude + "\nimport sys\nfrom janus_ft.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=REPO, start_new_session=True)


def complete(checkpoint: Path) -> bool:
    return all((checkpoint / name).is_file() for name in CHECKPOINT_FILES)


def adapter(path: Path) -> dict:
    return load_file(str(path / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def straight(tiny_dir, tmp_path_factory) -> Path:
    """The uninterrupted 6-step run every interrupted run must reproduce."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(sft("train.max_steps=6", f"output_dir={out}")) == 0
    return out


def assert_same_adapter(a: Path, b: Path) -> None:
    x, y = adapter(a), adapter(b)
    assert x.keys() == y.keys()
    for key in x:
        assert torch.allclose(x[key], y[key], atol=1e-6), key


def test_kill_during_checkpoint_write_keeps_previous_and_resumes_exactly(straight, tmp_path):
    out = tmp_path / "run"
    # Die like SIGKILL (no cleanup) after checkpoint-4's weights are written, before its optimizer state.
    prelude = ("import os\nfrom janus_ft.train.base import JanusTrainer\n"
               "orig = JanusTrainer._save_optimizer_and_scheduler\n"
               "def dying(self, output_dir):\n"
               "    if self.state.global_step == 4: os._exit(137)\n"
               "    return orig(self, output_dir)\n"
               "JanusTrainer._save_optimizer_and_scheduler = dying\n")
    proc = spawn(sft("train.max_steps=6", f"output_dir={out}"), prelude)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 137, log
    assert complete(out / "checkpoint-2") and not (out / "checkpoint-4").exists()
    assert (out / STAGING / "checkpoint-4" / "adapter_model.safetensors").is_file()   # the half-written one
    assert main(sft("train.max_steps=6", f"output_dir={out}", "train.resume=true")) == 0
    assert not (out / STAGING).exists()
    assert_same_adapter(straight, out)
    assert_same_adapter(straight / "checkpoint-4", out / "checkpoint-4")


def test_sigkill_at_any_moment_leaves_only_complete_checkpoints(tiny_dir, tmp_path):
    out = tmp_path / "run"
    proc = spawn(sft("train.max_steps=400", "train.save_steps=1", f"output_dir={out}"))
    deadline = time.time() + 240
    while len(list(out.glob("checkpoint-*"))) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.37)   # checkpoints are written every step: this lands mid-save most of the time
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    found = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert len(found) >= 3 and all(complete(c) for c in found), [c.name for c in found]
    last = int(found[-1].name.split("-")[1])
    assert main(sft(f"train.max_steps={last + 1}", "train.save_steps=1000", f"output_dir={out}",
                    "train.resume=true")) == 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == last + 1
    assert [e["step"] for e in state["log_history"] if "loss" in e][-1] == last + 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_stops(tiny_dir, tmp_path, sig):
    out = tmp_path / "run"
    proc = spawn(sft("train.max_steps=2000", "train.save_steps=1000", f"output_dir={out}"))
    lines = []
    for line in proc.stdout:          # wait until steps are being logged ("step N/M | loss ...")
        lines.append(line)
        if len([x for x in lines if x.startswith("step ")]) >= 2:
            break
    os.killpg(proc.pid, sig)
    rest, _ = proc.communicate(timeout=120)
    log = "".join(lines) + rest
    assert proc.returncode == 128 + sig, log
    step = json.loads((out / "trainer_state.json").read_text())["global_step"] if (out / "trainer_state.json").exists() \
        else max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert 2 <= step < 2000 and complete(out / f"checkpoint-{step}"), log
    assert f"stopped by {signal.Signals(sig).name} at step {step}" in log
    assert not (out / "adapter_model.safetensors").exists()     # no final adapter from a cut-short run
    assert main(sft(f"train.max_steps={step + 2}", f"output_dir={out}", "train.resume=true")) == 0
    logged = [e["step"] for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert logged[-2:] == [step + 1, step + 2]


def _poison(monkeypatch, task: str, call: int):
    """Make the `call`-th training loss non-finite for `task`."""
    import janus_ft.train.sft as trainer_module
    from janus_ft.janus import TASK_IDS

    task = TASK_IDS[task]
    real, calls = trainer_module.compute_loss_parts, []

    def poisoned(model, inputs, *args, **kwargs):
        parts = real(model, inputs, *args, **kwargs)
        if model.training:
            calls.append(1)
            if len(calls) == call and task in parts.per_task:
                parts.task_sums[task, 0] = float("nan")
                parts.total = parts.total * float("nan")
        return parts

    monkeypatch.setattr(trainer_module, "compute_loss_parts", poisoned)


def test_nan_loss_stops_naming_step_and_task(tiny_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _poison(monkeypatch, task="understanding", call=5)
    assert main(sft("train.max_steps=6", "data.mix={understanding: 1}", f"output_dir={out}")) == 1
    err = capsys.readouterr().err
    assert "non-finite loss at step 5 in task(s) understanding" in err
    assert "checkpoint-4" in err and complete(out / "checkpoint-4") and not (out / "checkpoint-6").exists()
    weights = adapter(out / "checkpoint-4")
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_nan_policy_skip_counts_and_keeps_weights_finite(tiny_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _poison(monkeypatch, task="understanding", call=3)
    assert main(sft("train.max_steps=4", "data.mix={understanding: 1}", "train.nan_policy=skip",
                    f"output_dir={out}")) == 0
    assert "1 micro-batch(es) skipped" in capsys.readouterr().out
    assert all(torch.isfinite(v).all() for v in adapter(out).values())
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert any(e.get("skipped_batches") == 1 for e in log)


def test_disk_full_during_checkpoint_keeps_earlier_ones(tiny_dir, tmp_path, monkeypatch, capsys):
    from janus_ft.train.base import JanusTrainer

    out = tmp_path / "run"
    real = JanusTrainer._save_optimizer_and_scheduler

    def full(self, output_dir):
        if self.state.global_step == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, output_dir)

    monkeypatch.setattr(JanusTrainer, "_save_optimizer_and_scheduler", full)
    assert main(sft("train.max_steps=6", f"output_dir={out}")) == 1
    err = capsys.readouterr().err
    assert "cannot write checkpoint-4" in err and "the disk is full" in err and "checkpoint-2, is intact" in err
    assert complete(out / "checkpoint-2") and not (out / "checkpoint-4").exists() and not (out / STAGING).exists()


def test_output_dir_holding_another_run_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "adapter_config.json").write_text("{}")
    assert main(sft(f"output_dir={out}")) == 2     # before any weight loads
    err = capsys.readouterr().err
    assert "is not empty: it holds an earlier janus-ft run (adapter_config.json)" in err
    assert "train.resume=true" in err and "train.overwrite_output_dir=true" in err
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json"]   # nothing written


def test_check_output_dir_cases(tmp_path):
    out = tmp_path / "run"
    check_output_dir(out, resume=False, overwrite=False)          # new: created and writable
    assert out.is_dir() and not list(out.iterdir())
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RecipeError, match="holds other files"):
        check_output_dir(out, resume=False, overwrite=False)
    check_output_dir(out, resume=True, overwrite=False)           # resume keeps everything
    assert (out / "notes.txt").exists()
    check_output_dir(out, resume=False, overwrite=True)           # overwrite empties it
    assert not list(out.iterdir())
    (tmp_path / "file").write_text("x")
    with pytest.raises(RecipeError, match="is a file"):
        check_output_dir(tmp_path / "file", resume=False, overwrite=False)
    with pytest.raises(RecipeError, match="cannot write there"):
        check_output_dir(tmp_path / "file" / "sub", resume=False, overwrite=False)


def test_overwrite_that_cannot_delete_is_a_recipe_error(tmp_path, monkeypatch):
    import janus_ft.train.checkpoint as checkpoint

    out = tmp_path / "run"
    (out / "checkpoint-2").mkdir(parents=True)

    def refuse(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(checkpoint.shutil, "rmtree", refuse)
    refused = r"cannot empty it for train.overwrite_output_dir \(Permission denied: .*checkpoint-2\)"
    with pytest.raises(RecipeError, match=refused):
        check_output_dir(out, resume=False, overwrite=True)


@pytest.mark.parametrize("save_steps,keep_last,signal_at,saved", [
    (3, False, None, [3, 6]),          # exactly every save_steps: no surprise checkpoint-7
    (3, True, None, [3, 6, 7]),        # train.save_last: the last step too
    (100, False, None, []),            # save_steps beyond max_steps: none (the final adapter is written anyway)
    (100, False, 7, [7]),              # a signal at the last step still saves
])
def test_checkpoints_follow_save_steps(tmp_path, save_steps, keep_last, signal_at, saved):
    """The Trainer's own flow callback, then janus_ft's, in the order sft registers them."""
    from transformers import TrainerControl, TrainerState, TrainingArguments
    from transformers.trainer_callback import DefaultFlowCallback

    from janus_ft.train.checkpoint import SaveEverySteps, SignalCheckpoint

    args = TrainingArguments(output_dir=str(tmp_path), save_steps=save_steps, report_to="none")
    state, stopper = TrainerState(max_steps=7, save_steps=save_steps), SignalCheckpoint()
    callbacks = [DefaultFlowCallback(), SaveEverySteps(keep_last), stopper]
    written = []
    for step in range(1, 8):
        state.global_step, control = step, TrainerControl()
        stopper.received = signal.SIGTERM if step == signal_at else None
        for callback in callbacks:
            control = callback.on_step_end(args, state, control) or control
        if control.should_save:
            written.append(step)
    assert written == saved
