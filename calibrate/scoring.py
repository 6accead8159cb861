"""SQuAD v1.1's official answer normalisation, exact match and token F1 (scores in percent), and how far apart two
conditions scored on the same items are (``paired_difference``)."""

from __future__ import annotations

import random
import re
import string
from collections import Counter

_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, strip punctuation and the articles a/an/the, fold white space (as the official script)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: list[str]) -> float:
    return 100.0 * max(float(normalize_answer(prediction) == normalize_answer(a)) for a in answers)


def _f1(prediction: str, answer: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(answer).split()
    common = Counter(pred) & Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, answers: list[str]) -> float:
    return 100.0 * max(_f1(prediction, a) for a in answers)


def first_line(text: str) -> str:
    """The answer is the first non-empty line of the output."""
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def paired_difference(
    a: list[float], b: list[float], resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """The mean of ``b`` − ``a`` over the same items, and its percentile bootstrap interval at ``level`` (items drawn
    with replacement ``resamples`` times, seeded): (mean, low, high). An interval that holds 0 says these items do not
    tell the two conditions apart."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired scores need the same items on both sides, got {len(a)} and {len(b)}")
    diff = [y - x for x, y in zip(a, b, strict=True)]
    n, rng = len(diff), random.Random(seed)
    means = sorted(sum(rng.choices(diff, k=n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    low, high = means[int(tail * resamples)], means[min(resamples - 1, int((1 - tail) * resamples))]
    return sum(diff) / n, low, high
