"""`janus-ft eval --reward` (eval/reward_report.py): held-out prompts, text and images, sampled and
scored with the rewards that trained an adapter; for that adapter the reported means are the last
held-out means its GRPO run logged (same functions, convention, seeds and weights), base and
adapter side by side, every completion written with its scores, and the image grids."""

import json
from pathlib import Path

import pytest
from conftest import write_jsonl
from PIL import Image

from janus_ft.cli import main
from janus_ft.recipe import load_recipe

REPO = Path(__file__).resolve().parent.parent
GRPO = Path(__file__).resolve().parent.parent / "data_templates/grpo"
PROBE = '''
import json

def state_probe(completions, trainer_state, **kwargs):
    with open({log!r}, "a") as f:
        f.write(json.dumps(trainer_state.global_step) + "\\n")
    return [None] * len(completions)
'''


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory):
    """A 2-step GRPO run whose held-out prompts are 2 questions and 2 captions; (overrides, run dir, probe log)."""
    root = tmp_path_factory.mktemp("reward_eval")
    val = write_jsonl(root / "val.jsonl", [json.loads(line) for line in (GRPO / "red_val.jsonl").read_text().splitlines()[:2]]
                      + [json.loads(line) for line in (GRPO / "t2i_val.jsonl").read_text().splitlines()[:2]])
    for line in (GRPO / "red_val.jsonl").read_text().splitlines()[:2]:   # images are relative to the jsonl
        image = json.loads(line)["images"][0]
        (root / Path(image).parent).mkdir(parents=True, exist_ok=True)
        target = root / image
        if not target.exists():
            target.write_bytes((GRPO / image).read_bytes())
    (root / "probe.py").write_text(PROBE.format(log=str(root / "steps.jsonl")))
    overrides = [f"data.val=[{{path: {val}}}]", "grpo.num_generations=4", "grpo.num_generations_eval=3",
                 "grpo.max_completion_length=2", "train.per_device_train_batch_size=8", "train.max_steps=2",
                 "train.eval_steps=2", "train.save_steps=100", "train.disable_tqdm=true", "train.eval_images=2",
                 "grpo.rewards=[{fn: exact_match}, {fn: format, weight: 0.1, args: {pattern: '[a-z]+'}}, "
                 f"{{fn: colour, weight: 0.5}}, {{fn: '{root / 'probe.py'}:state_probe'}}]",
                 f"output_dir={root / 'run'}"]
    assert main(["grpo", "--recipe", str(REPO / "recipes/grpo_format.yaml"), *overrides]) == 0
    (root / "steps.jsonl").unlink()
    return overrides, root / "run", root / "steps.jsonl"


def test_the_adapter_scores_what_its_run_logged_last(trained, capsys):
    overrides, run, steps = trained
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    last = [e for e in history if "eval_reward" in e][-1]
    assert last["step"] == 2
    assert main(["eval", "--recipe", str(REPO / "recipes/grpo_format.yaml"), "--adapter", str(run), "--compare-base",
                 *overrides]) == 0
    report = json.loads((run / "eval/eval.json").read_text())
    adapter, base = report["results"]["adapter"], report["results"]["base"]
    assert adapter["reward"] == pytest.approx(last["eval_reward"], abs=1e-6)
    for label in ("exact_match", "format", "colour"):
        assert adapter[f"rewards/{label}"] == pytest.approx(last[f"eval_rewards/{label}"], abs=1e-6)
    assert "rewards/state_probe" not in adapter   # it returned None everywhere
    assert report["delta"]["reward"] == pytest.approx(adapter["reward"] - base["reward"])
    assert base != adapter and adapter["completions"] == base["completions"] == 4 * 3
    # trainer_state: the base gets a fresh state, the adapter its run's final one (as the run's last evaluation did).
    assert sorted(set(json.loads(x) for x in steps.read_text().splitlines())) == [0, 2]
    table = (run / "eval/eval.md").read_text()
    assert "| reward | weight | base | adapter | delta |" in table
    assert f"| `colour` | 0.5 | {base['rewards/colour']:.4f} | {adapter['rewards/colour']:.4f} |" in table
    assert table in capsys.readouterr().out


def test_completions_and_grids(trained):
    _, run, _ = trained
    report = json.loads((run / "eval/eval.json").read_text())
    for label in ("base", "adapter"):
        rows = [json.loads(x) for x in (run / f"eval/rewards_{label}.jsonl").read_text().splitlines()]
        assert len(rows) == 12
        text, images = rows[:6], rows[6:]
        assert all(r["rewards"]["colour"] is None and r["rewards"]["format"] in (0.0, 1.0) for r in text)
        assert all(r["completion"] == "<image>" and r["rewards"]["exact_match"] is None for r in images)
        colour = [r["rewards"]["colour"] for r in rows if r["rewards"]["colour"] is not None]
        assert report["results"][label]["rewards/colour"] == pytest.approx(sum(colour) / len(colour), abs=1e-6)
        grid = Image.open(run / f"eval/{report['samples'][label]['grid']}")
        assert grid.size == (3 * 64 + 2 * 2, 2 * 64 + 2)   # a row per caption, its 3 images
        assert report["samples"][label]["captions"][0] == "a painting of a red robot in the evening"
    assert Image.open(run / "eval/rewards_base.png").tobytes() != Image.open(run / "eval/rewards_adapter.png").tobytes()


def test_from_python_with_a_callable(trained):
    from janus_ft.eval.reward_report import evaluate_with_rewards

    overrides, _, _ = trained

    def short(completions, **kwargs):
        return [None if not isinstance(c, str) else float(len(c) <= 3) for c in completions]

    recipe = load_recipe(REPO / "recipes/grpo_format.yaml", overrides)
    report, outputs = evaluate_with_rewards(recipe, [short], n=2)
    assert list(report["results"]) == ["base"] and report["rewards"] == [{"fn": "short", "label": "short", "weight": 1.0}]
    texts = [r["completion"] for r in outputs["base"]["rows"] if r["completion"] != "<image>"]
    assert report["results"]["base"]["rewards/short"] == pytest.approx(sum(len(t) <= 3 for t in texts) / len(texts))


def test_reward_flag_mistakes_exit_2(trained, capsys):
    overrides, run, _ = trained
    assert main(["eval", "--recipe", str(REPO / "recipes/grpo_format.yaml"), "--reward", "nowhere.py:f", *overrides]) == 2
    assert "rewards[0].fn: no such file nowhere.py" in capsys.readouterr().err
    assert main(["eval", "--recipe", str(REPO / "recipes/grpo_format.yaml"), "--samples", "0", *overrides]) == 2
    assert "--samples must be >= 1" in capsys.readouterr().err
