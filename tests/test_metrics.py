"""janus_ft.eval.metrics: hand-made cases for CER, edit distance, normalised exact match, NLL."""

from __future__ import annotations

import math

import pytest
import torch

from janus_ft.eval.metrics import (
    cer,
    exact_match,
    levenshtein,
    mean_nll,
    normalize_latex,
    normalized_edit_distance,
    perplexity,
    text_scores,
    token_nll,
)


@pytest.mark.parametrize("a, b, distance", [
    ("", "", 0), ("abc", "", 3), ("", "abc", 3), ("abc", "abc", 0),
    ("abc", "abd", 1), ("abc", "ac", 1), ("ac", "abc", 1), ("kitten", "sitting", 3),
    ("flaw", "lawn", 2), ("\\frac{a}{b}", "\\frac{a}{c}", 1),
])
def test_levenshtein(a, b, distance):
    assert levenshtein(a, b) == distance == levenshtein(b, a)


def test_cer_is_edits_over_reference_length():
    assert cer("green", "green") == 0.0
    assert cer("gren", "green") == pytest.approx(1 / 5)       # one deletion
    assert cer("greeen", "green") == pytest.approx(1 / 5)     # one insertion
    assert cer("red", "green") == pytest.approx(3 / 5)        # r-e-d vs g-r-e-e-n: 3 edits
    assert cer("a much longer answer", "ab") > 1.0            # not capped: long wrong answers cost more
    assert cer("", "") == 0.0 and cer("x", "") == 1.0


def test_normalized_edit_distance_is_bounded():
    assert normalized_edit_distance("abcd", "wxyz") == 1.0
    assert normalized_edit_distance("a much longer answer", "ab") <= 1.0
    assert normalized_edit_distance("abc", "abd") == pytest.approx(1 / 3)


def test_exact_match_collapses_whitespace_only_for_plain_text():
    assert exact_match("A  cat.\n", " A cat.")
    assert not exact_match("A cat", "Acat")
    assert not exact_match("a cat", "A cat")                  # case matters


@pytest.mark.parametrize("prediction, reference", [
    (r"\frac {a} {b}", r"\frac{a}{b}"),
    (r"x ^ { 2 } + y ^ 2 = z", r"x^{2}+y^2=z"),
    (r"\sum _ { i = 1 } ^ { n } i", r"\sum_{i=1}^{n} i"),
    (r"a \cdot b", r"a\cdot b"),
    (r"\left( x \right)", r"\left(x\right)"),
])
def test_exact_match_ignores_latex_layout(prediction, reference):
    assert exact_match(prediction, reference)
    assert exact_match(prediction, reference, latex=True)


def test_exact_match_keeps_significant_latex_spaces():
    assert normalize_latex(r"\alpha b") != normalize_latex(r"\alphab")   # the space ends the command
    assert not exact_match(r"\frac{a}{b}", r"\frac{b}{a}")
    assert not exact_match(r"\frac {a} {b}", r"\frac{a}{b}", latex=False)  # plain mode: spaces count


def test_text_scores_bundle():
    assert text_scores(" green ", "green") == {"exact_match": 1.0, "cer": 0.0, "edit_distance": 0.0}
    scores = text_scores("red", "green")
    assert scores["exact_match"] == 0.0 and scores["cer"] == pytest.approx(0.6)


def test_token_nll_matches_hand_computation():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]])
    labels = torch.tensor([0, 2, -100])
    total, n = token_nll(probs.log(), labels)
    assert n == 2
    assert total == pytest.approx(-math.log(0.7) - math.log(0.8), rel=1e-6)
    assert token_nll(probs.log(), torch.full((3,), -100)) == (0.0, 0)


def test_mean_nll_and_perplexity():
    assert mean_nll(math.log(4) * 10, 10) == pytest.approx(math.log(4))
    assert perplexity(mean_nll(math.log(4) * 10, 10)) == pytest.approx(4.0)
    # A uniform model over V classes has perplexity V.
    v = 256
    total, n = token_nll(torch.zeros(5, v), torch.arange(5))
    assert perplexity(mean_nll(total, n)) == pytest.approx(v, rel=1e-5)
    assert math.isnan(mean_nll(0.0, 0))
    assert perplexity(1e6) == float("inf")
