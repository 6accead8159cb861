"""Representation metrics against hand-computed values."""

import pytest
import torch

from aligners import metrics


def test_perfect_prediction() -> None:
    t = torch.randn(50, 8, dtype=torch.float64)
    assert metrics.mean_cosine(t, t) == pytest.approx(1.0)
    assert metrics.r2(t, t) == pytest.approx(1.0)
    assert metrics.retrieval_at_1(t, t) == 1.0


def test_mean_prediction_has_zero_r2_and_the_baseline_cosine() -> None:
    t = torch.randn(40, 6, dtype=torch.float64) + 4.0
    mean_pred = t.mean(dim=0).expand_as(t)
    assert metrics.r2(mean_pred, t) == pytest.approx(0.0, abs=1e-12)
    assert metrics.mean_cosine(mean_pred, t) == pytest.approx(metrics.mean_baseline_cosine(t))
    assert metrics.mean_baseline_cosine(t) > 0.9  # the common offset makes the baseline high
    assert metrics.retrieval_at_1(mean_pred + 1e-9 * torch.randn_like(t), t) < 0.5


def test_hand_computed_cosine_and_retrieval() -> None:
    pred = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    true = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    assert metrics.mean_cosine(pred, true) == pytest.approx((1.0 + 0.0 + 1.0) / 3)
    # Row 1 (0, 1) is nearest to true row 2 (1, 1), not its own pair.
    assert metrics.retrieval_at_1(pred, true) == pytest.approx(2 / 3)


def test_retrieval_caps_candidates() -> None:
    t = torch.randn(1500, 4, dtype=torch.float64)
    assert metrics.retrieval_at_1(t, t, max_candidates=100) == 1.0


def test_shape_mismatch_and_constant_truth() -> None:
    with pytest.raises(ValueError, match="same shape"):
        metrics.mean_cosine(torch.randn(3, 2), torch.randn(3, 4))
    with pytest.raises(ValueError, match="undefined"):
        metrics.r2(torch.randn(3, 2), torch.ones(3, 2))
    out = metrics.evaluate(torch.randn(20, 3), torch.randn(20, 3))
    assert set(out) == {"cosine", "mean_baseline_cosine", "centred_cosine", "r2", "retrieval_at_1", "n"}
