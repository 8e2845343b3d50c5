"""Metrics: pure functions comparing predictions with references, and token NLL / perplexity.

Text metrics work on characters (OCR and LaTeX answers are judged character by character);
exact match compares normalised strings so that layout-only differences do not count as errors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..janus import IGNORE_INDEX

# A LaTeX control word (`\frac`), a control symbol (`\{`, `\\`), or any other single non-space char.
_LATEX_TOKEN = re.compile(r"\\[A-Za-z]+|\\.|\S", re.DOTALL)
_LATEX_HINT = re.compile(r"\\[A-Za-z]+|[\^_{}]")


def levenshtein(a: Sequence, b: Sequence) -> int:
    """Edit distance (insertions, deletions, substitutions, each cost 1) between two sequences.

    >>> levenshtein("kitten", "sitting")
    3
    >>> levenshtein("", "abc"), levenshtein("abc", "abc")
    (3, 0)
    """
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def cer(prediction: str, reference: str) -> float:
    """Character error rate: edits / reference length (can exceed 1 for long wrong answers).
    An empty reference scores 0 for an empty prediction and 1 otherwise.

    >>> cer("helo", "hello")
    0.2
    >>> cer("", ""), cer("x", "")
    (0.0, 1.0)
    """
    if not reference:
        return float(bool(prediction))
    return levenshtein(prediction, reference) / len(reference)


def normalized_edit_distance(prediction: str, reference: str) -> float:
    """Edits / length of the longer string, in [0, 1] (0: identical).

    >>> normalized_edit_distance("abcd", "abxd")
    0.25
    >>> normalized_edit_distance("", "")
    0.0
    """
    longest = max(len(prediction), len(reference))
    return levenshtein(prediction, reference) / longest if longest else 0.0


def normalize_whitespace(text: str) -> str:
    """Runs of whitespace -> one space, ends stripped.

    >>> normalize_whitespace("  a \\n b\\t c ")
    'a b c'
    """
    return " ".join(text.split())


def normalize_latex(text: str) -> str:
    """LaTeX with insignificant spaces removed.

    In math mode a space only matters where it ends a control word before a letter (`\\alpha b` is
    not `\\alphab`); everywhere else, around operators, braces and commands, it is layout. That
    space is kept as one space, all others are dropped.

    >>> normalize_latex(r"\\frac {a} {b}") == normalize_latex(r"\\frac{a}{b}")
    True
    >>> normalize_latex(r"x ^ { 2 } + y")
    'x^{2}+y'
    >>> normalize_latex(r"\\alpha  b"), normalize_latex(r"a \\cdot b")
    ('\\\\alpha b', 'a\\\\cdot b')
    """
    out: list[str] = []
    for token in _LATEX_TOKEN.findall(text):
        if out and out[-1][0] == "\\" and out[-1][1:].isalpha() and token[0].isalpha():
            out.append(" ")
        out.append(token)
    return "".join(out)


def looks_like_latex(text: str) -> bool:
    """True for text with a control word, a brace or a sub/superscript.

    >>> looks_like_latex(r"\\frac{a}{b}"), looks_like_latex("A red circle.")
    (True, False)
    """
    return bool(_LATEX_HINT.search(text))


def exact_match(prediction: str, reference: str, latex: bool | None = None) -> bool:
    """Equal after whitespace normalisation; for LaTeX (`latex=None`: if the reference looks like
    LaTeX) also after removing insignificant spaces.

    >>> exact_match(" A  cat.\\n", "A cat.")
    True
    >>> exact_match(r"\\frac {a} {b}", r"\\frac{a}{b}")
    True
    >>> exact_match("a cat", "acat")
    False
    """
    if latex is None:
        latex = looks_like_latex(reference)
    norm = normalize_latex if latex else normalize_whitespace
    return norm(prediction) == norm(reference)


def text_scores(prediction: str, reference: str) -> dict[str, float]:
    """All text metrics for one answer (exact match as 0/1, so that means are accuracies).

    >>> text_scores("14", "14")
    {'exact_match': 1.0, 'cer': 0.0, 'edit_distance': 0.0}
    """
    pred, ref = prediction.strip(), reference.strip()
    return {"exact_match": float(exact_match(pred, ref)), "cer": cer(pred, ref),
            "edit_distance": normalized_edit_distance(pred, ref)}


def token_nll(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> tuple[float, int]:
    """(sum of negative log-likelihoods, number of scored tokens) of `labels` under `logits`.

    `logits` (..., vocab) and `labels` (...) are already aligned (logits at i score labels at i).

    >>> logits = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.75]]))
    >>> total, n = token_nll(logits, torch.tensor([0, -100]))
    >>> round(total, 4), n
    (0.6931, 1)
    """
    keep = labels != ignore_index
    if not keep.any():
        return 0.0, 0
    loss = F.cross_entropy(logits[keep].float(), labels[keep], reduction="sum")
    return float(loss), int(keep.sum())


def mean_nll(total: float, tokens: int) -> float:
    """Token-weighted mean NLL (nan when nothing was scored).

    >>> mean_nll(6.0, 3)
    2.0
    """
    return total / tokens if tokens else float("nan")


def perplexity(nll: float) -> float:
    """exp(mean NLL per token); inf (not an OverflowError) for a hopeless model.

    >>> round(perplexity(math.log(7.0)), 6)
    7.0
    """
    return math.exp(nll) if nll < 700 else float("inf")
