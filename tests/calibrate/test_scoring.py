"""Answer scores (SQuAD v1.1's rules) and the paired comparison of two conditions on the same items."""

from __future__ import annotations

import random

import pytest

from calibrate.scoring import exact_match, f1_score, paired_difference


def test_squad_rules_ignore_case_punctuation_and_articles() -> None:
    assert exact_match("The Lighthouse.", ["lighthouse"]) == 100.0
    assert f1_score("in 1874 it was", ["1874"]) == pytest.approx(100 * 2 * (1 / 4) / (1 / 4 + 1))
    assert f1_score("nothing alike", ["1874", "Quillmere"]) == 0.0


def test_a_constant_shift_is_its_own_interval() -> None:
    a = [float(k % 7) for k in range(50)]
    mean, low, high = paired_difference(a, [x + 3.0 for x in a])
    assert (mean, low, high) == pytest.approx((3.0, 3.0, 3.0))


def test_the_interval_matches_the_normal_approximation_for_a_coin() -> None:
    # b beats a by 1 on half of 400 items, ties on the rest: mean 0.5, standard error sqrt(0.25 / 400) = 0.025.
    rng = random.Random(1)
    a = [rng.random() for _ in range(400)]
    b = [x + (1.0 if k % 2 else 0.0) for k, x in enumerate(a)]
    mean, low, high = paired_difference(a, b, resamples=4000)
    assert mean == pytest.approx(0.5)
    assert low == pytest.approx(0.5 - 1.96 * 0.025, abs=0.01)
    assert high == pytest.approx(0.5 + 1.96 * 0.025, abs=0.01)


def test_unpaired_scores_are_refused() -> None:
    with pytest.raises(ValueError, match="same items"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="same items"):
        paired_difference([], [])
