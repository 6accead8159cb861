"""SQuAD v1.1's official answer normalisation, exact match and token F1 (scores in percent)."""

from __future__ import annotations

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
