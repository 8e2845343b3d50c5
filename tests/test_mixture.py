"""Mixing: task ratios hold inside every optimizer step and over a run; the schedule is what the
trainer consumes."""

import pytest

from janus_ft.data.mixture import block_counts, build_schedule


@pytest.mark.parametrize("global_batch", [10, 4, 3, 16])
def test_ratios_over_100_steps(global_batch):
    sizes = {"understanding": 50, "text": 7, "generation": 30}
    ratios = {"understanding": 5, "text": 1, "generation": 4}
    schedule = build_schedule(sizes, ratios, global_batch, 100, seed=0)
    assert len(schedule) == 100 * global_batch
    total = len(schedule)
    for task, ratio in ratios.items():
        share = sum(t == task for t, _ in schedule) / total
        assert share == pytest.approx(ratio / 10, abs=0.01)     # within one percentage point
        assert all(0 <= i < sizes[task] for t, i in schedule if t == task)
    # every step holds its share, rounded: never more than one sample away from the exact ratio
    for counts in block_counts(ratios, global_batch, 100):
        assert sum(counts.values()) == global_batch
        for task, c in counts.items():
            assert abs(c - global_batch * ratios[task] / 10) < 1 + 1e-9


def test_each_step_mixes_all_tasks_when_the_batch_allows():
    schedule = build_schedule({"understanding": 9, "text": 9, "generation": 9},
                              {"understanding": 5, "text": 1, "generation": 4}, 10, 20, seed=3)
    for step in range(20):
        block = schedule[step * 10:(step + 1) * 10]
        assert sorted(t for t, _ in block).count("understanding") == 5
        assert sum(t == "text" for t, _ in block) == 1


def test_small_task_cycles_through_all_its_samples_before_repeating():
    schedule = build_schedule({"text": 5, "understanding": 100}, {"text": 1, "understanding": 1}, 2, 10, seed=1)
    texts = [i for t, i in schedule if t == "text"]
    assert sorted(texts[:5]) == list(range(5)) and sorted(texts[5:10]) == list(range(5))


def test_schedule_is_deterministic_per_seed():
    args = ({"understanding": 20, "generation": 20}, {"understanding": 1, "generation": 1}, 4, 10)
    assert build_schedule(*args, seed=5) == build_schedule(*args, seed=5)
    assert build_schedule(*args, seed=5) != build_schedule(*args, seed=6)


def test_without_ratios_the_tasks_present_mix_by_size_one_pass_per_epoch():
    """No data.mix: each task's share is its share of the data, and an epoch uses every sample
    exactly once (a task with no samples is simply absent, not an error)."""
    from janus_ft.data.mixture import resolve_ratios, steps_for_epochs

    sizes = {"understanding": 30, "text": 10, "generation": 20}
    steps = steps_for_epochs(sizes, {}, 6, epochs=1)
    assert steps == 10
    schedule = build_schedule(sizes, resolve_ratios({}, sizes), 6, steps, seed=0)
    for task, n in sizes.items():
        assert sorted(i for t, i in schedule if t == task) == list(range(n))
    assert resolve_ratios({}, {"understanding": 4, "text": 0}) == {"understanding": 4}


def test_nothing_left_to_mix_is_a_user_error():
    from janus_ft.data.mixture import resolve_ratios
    from janus_ft.errors import UserError

    with pytest.raises(UserError, match="no samples to train on: every record is longer than data.max_length"):
        resolve_ratios({}, {"understanding": 0, "text": 0})
