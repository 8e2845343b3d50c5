"""The console of `janus-ft sft`: exact lines per log, evaluation and run, and no warning left but
the ones listed here with their reason."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from janus_ft.cli import main
from janus_ft.train.console import QUIET, evaluation_line, quiet_third_party, summary, training_line

REPO = Path(__file__).resolve().parent.parent

# Warnings a short demo run may still show, as (category or logger name, start of the message) ->
# why it is shown. Empty: every warning the run raised was either fixed at janus_ft's call or is a
# third-party one in janus_ft.train.console.QUIET. A new entry here needs a reason a user can act on.
ALLOWED: dict[tuple[str, str], str] = {}


def test_training_and_evaluation_lines():
    logs = {"loss": 5.70123, "grad_norm": 1.694, "learning_rate": 0.002, "loss_text": 6.195,
            "loss_understanding": 6.004, "loss_generation": 5.623, "epoch": 0.083}
    assert training_line(logs, 5, 60) == ("step 5/60 | loss 5.701 | understanding 6.004  text 6.195  "
                                          "generation 5.623 | lr 0.002  grad_norm 1.694")
    logs = {"eval_loss": 3.1, "eval_runtime": 0.2, "eval_samples_per_second": 99.0, "eval_loss_generation": 2.622,
            "eval_loss_understanding": 2.531, "eval_understanding_exact_match": 0.125,
            "eval_understanding_cer": 1.044, "epoch": 1.0}
    assert evaluation_line(logs, 60, 60) == ("eval step 60/60 | loss understanding 2.531  generation 2.622 | "
                                             "understanding exact_match 0.125  cer 1.044")


def test_summary_names_steps_time_losses_and_outputs(tmp_path):
    history = [{"loss": 5.0, "loss_understanding": 6.0, "loss_generation": 5.5, "step": 5},
               {"eval_loss": 6.0, "eval_loss_understanding": 6.7, "eval_loss_generation": 5.7, "step": 0},
               {"loss": 2.0, "loss_understanding": 2.5, "loss_generation": 2.1, "step": 60},
               {"eval_loss": 2.6, "eval_loss_understanding": 2.53, "eval_loss_generation": 2.62, "step": 60}]
    (tmp_path / "samples").mkdir()
    assert summary(history, 60, 17.4, tmp_path).splitlines() == [
        "60 steps in 17 s; loss per task, first -> last logged:",
        "  understanding  train 6.000 -> 2.500   eval 6.700 -> 2.530",
        "  generation     train 5.500 -> 2.100   eval 5.700 -> 2.620",
        f"adapter, processor, recipe.yaml, mixture.json, trainer_state.json, loss.png and sample "
        f"grids in samples/ in {tmp_path}"]


def _shown_to_user(w: warnings.WarningMessage) -> bool:
    """Python's default filters hide these categories unless the code raising them is the program's
    own; janus_ft's own are counted all the same (measured: a short run raises 14 DeprecationWarnings
    of `torch.jit.script_method`, all from torch's own modules)."""
    hidden = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)
    return not issubclass(w.category, hidden) or Path(w.filename).resolve().is_relative_to(REPO / "janus_ft")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture()
def log_records(monkeypatch):
    """Every WARNING+ record a logger hands to its handlers (so after the logger's filters), from
    any logger, propagating to the root or not (transformers and DeepSpeed do not), and from
    loggers created during the test."""
    records = []
    call_handlers = logging.Logger.callHandlers

    def capture(self, record):
        if record.levelno >= logging.WARNING:
            records.append(record)
        call_handlers(self, record)

    monkeypatch.setattr(logging.Logger, "callHandlers", capture)
    return records


@pytest.mark.parametrize("quiet", QUIET, ids=lambda q: q.message[:30])
def test_quiet_hides_exactly_its_message(quiet):
    exact, near_miss = quiet.message + " (the rest of it)", "Not quite: " + quiet.message
    logger = logging.getLogger(quiet.logger or "janus_ft.test")
    logger.addHandler(handler := _Records())

    def emit(message):
        if quiet.category is None:
            logger.warning(message)
        else:
            warnings.warn(message, quiet.category, stacklevel=1)
            warnings.warn(message, UserWarning, stacklevel=1)   # the same text in another category is not hidden

    try:
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            with quiet_third_party():
                emit(exact)
                emit(near_miss)
            emit(exact)   # hidden only while janus_ft runs
    finally:
        logger.removeHandler(handler)
    assert quiet.reason
    if quiet.category is None:
        assert [r.getMessage() for r in handler.records] == [near_miss, exact]
    else:
        assert [(w.category, str(w.message)) for w in shown] == [
            (UserWarning, exact), (quiet.category, near_miss), (UserWarning, near_miss),
            (quiet.category, exact), (UserWarning, exact)]


def test_a_short_run_warns_only_from_the_allow_list(tmp_path, monkeypatch, log_records):
    """The demo recipe, shortened but through every stage that ran warnings before (a first run
    that builds the tiny model and its VQ cache, DataLoaders, evaluation with generated answers and
    images, checkpoint and final save), warns nothing outside ALLOWED."""
    from transformers.utils import logging as hf_logging

    monkeypatch.setenv("JANUS_FT_CACHE", str(tmp_path / "cache"))   # a first run: the tiny model is built
    hf_logging.warning_once.cache_clear()   # a message transformers already gave in this process shows again
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        assert main(["sft", "--recipe", str(REPO / "recipes/demo.yaml"), f"output_dir={tmp_path / 'run'}",
                     "train.max_steps=2", "train.eval_steps=1", "train.save_steps=1", "train.eval_answers=2",
                     "train.eval_images=2"]) == 0
    raised = [(w.category.__name__, str(w.message)) for w in shown if _shown_to_user(w)]
    raised += [(r.name, r.getMessage()) for r in log_records]
    unexpected = [(source, message) for source, message in raised
                  if not any(source == s and message.startswith(m) for s, m in ALLOWED)]
    assert unexpected == []
    assert (tmp_path / "run" / "checkpoint-2").is_dir() and (tmp_path / "run" / "samples" / "step-2.png").is_file()
