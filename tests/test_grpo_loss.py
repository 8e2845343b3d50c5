"""The GRPO loss equals a hand computation on a fixed batch: advantages, ratio, clipping, KL and each
token normalisation, written out element by element with plain Python floats."""

import math

import pytest
import torch

from janus_ft.model.grpo_loss import group_advantages, grpo_loss

# Two prompts x G=2 completions; rows 0-1 are one group, 2-3 the other. Row 3 has 1 token.
REWARDS = [1.0, 0.0, 0.5, 2.5]
LOGPS = [[-1.0, -2.0, -0.5], [-0.3, -0.2, -1.5], [-2.0, -0.1, -0.4], [-0.7, 0.0, 0.0]]
OLD = [[-1.3, -2.0, -0.4], [-0.3, -0.6, -1.0], [-2.0, -0.1, -0.9], [-0.2, 0.0, 0.0]]
REF = [[-1.1, -1.5, -0.5], [-0.8, -0.2, -1.5], [-1.0, -0.3, -0.4], [-0.7, 0.0, 0.0]]
MASK = [[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 0]]


def hand_advantages(rewards, g):
    out = []
    for start in range(0, len(rewards), g):
        group = rewards[start:start + g]
        mean = sum(group) / g
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (g - 1))
        out += [(r - mean) / (std + 1e-4) for r in group]
    return out


def hand_token_losses(beta, eps_low, eps_high):
    adv = hand_advantages(REWARDS, 2)
    rows = []
    for i in range(4):
        row = []
        for t in range(3):
            ratio = math.exp(LOGPS[i][t] - OLD[i][t])
            clipped = min(max(ratio, 1 - eps_low), 1 + eps_high)
            loss = -min(ratio * adv[i], clipped * adv[i])
            d = REF[i][t] - LOGPS[i][t]
            kl = math.exp(d) - d - 1
            row.append((loss + beta * kl, kl, (ratio > 1 + eps_high and adv[i] > 0) or (ratio < 1 - eps_low and adv[i] < 0)))
        rows.append(row)
    return rows


def run(loss_type, beta=0.04, eps=0.2, eps_high=0.28):
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    adv = group_advantages(t(REWARDS), 2)
    return grpo_loss(t(LOGPS), t(MASK).bool(), adv, t(OLD), t(REF), beta=beta, epsilon=eps, epsilon_high=eps_high,
                     loss_type=loss_type, lengths=t([4.0, 4.0, 4.0, 4.0]), step_tokens=11)


def test_advantages_by_hand():
    assert group_advantages(torch.tensor(REWARDS, dtype=torch.float64), 2).tolist() == pytest.approx(
        hand_advantages(REWARDS, 2), abs=1e-12)
    # Every completion of a group scoring alike teaches nothing.
    assert group_advantages(torch.tensor([3.0, 3.0]), 2).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_loss_equals_hand_computation(loss_type):
    rows = hand_token_losses(0.04, 0.2, 0.28)
    masked = [[rows[i][t][0] for t in range(3) if MASK[i][t]] for i in range(4)]
    expected = {
        "grpo": sum(sum(r) / len(r) for r in masked) / 4,
        "bnpo": sum(sum(r) for r in masked) / sum(len(r) for r in masked),
        "dr_grpo": sum(sum(r) / 4.0 for r in masked) / 4,
        "dapo": sum(sum(r) for r in masked) / 11,
    }[loss_type]
    out = run(loss_type)
    assert out.loss.item() == pytest.approx(expected, abs=1e-10)
    n = sum(map(sum, MASK))
    assert out.kl.item() == pytest.approx(sum(rows[i][t][1] for i in range(4) for t in range(3) if MASK[i][t]) / n)
    clipped = sum(rows[i][t][2] for i in range(4) for t in range(3) if MASK[i][t])
    assert clipped >= 2   # the fixed batch exercises both clip sides
    assert out.clip_fraction.item() == pytest.approx(clipped / n)


def test_beta_zero_has_no_kl_and_on_policy_gradient_is_advantage_weighted():
    out = run("grpo", beta=0.0)
    rows = hand_token_losses(0.0, 0.2, 0.28)
    masked = [[rows[i][t][0] for t in range(3) if MASK[i][t]] for i in range(4)]
    assert out.loss.item() == pytest.approx(sum(sum(r) / len(r) for r in masked) / 4, abs=1e-10)
    assert out.kl.item() == 0.0
    # On policy (no old log-probs): d loss / d logp = -A / (tokens of the row * rows).
    logps = torch.tensor(LOGPS, dtype=torch.float64, requires_grad=True)
    adv = group_advantages(torch.tensor(REWARDS, dtype=torch.float64), 2)
    grpo_loss(logps, torch.tensor(MASK).bool(), adv).loss.backward()
    tokens = [sum(m) for m in MASK]
    expected = [[-adv[i].item() / (tokens[i] * 4) * MASK[i][t] for t in range(3)] for i in range(4)]
    assert logps.grad.tolist() == [pytest.approx(r, abs=1e-12) for r in expected]


def test_a_none_reward_is_left_out_of_its_group_as_trl_does():
    """NaN (every reward returned None for that completion): out of the group's mean and std, its
    own advantage 0; a group left with one scored completion has no std, so 0 there too."""
    nan = float("nan")
    rewards = [1.0, nan, 0.0, 4.0, 2.0, 3.0, 5.0, nan, nan]
    got = group_advantages(torch.tensor(rewards), 3).tolist()
    want = hand_advantages([1.0, 0.0], 2)[:1] + [0.0] + hand_advantages([1.0, 0.0], 2)[1:] \
        + hand_advantages([4.0, 2.0, 3.0], 3) + [0.0, 0.0, 0.0]
    assert got == pytest.approx(want, abs=1e-6)
    centred = group_advantages(torch.tensor(rewards), 3, scale="none").tolist()
    assert centred == pytest.approx([0.5, 0.0, -0.5, 1.0, -1.0, 0.0, 0.0, 0.0, 0.0])
