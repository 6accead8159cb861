"""Representation-level quality of a map on held-out pairs (see docs/evaluation): cosine, R², retrieval@1.

All metrics take predictions and true target states as (n, d) tensors and compute in float64.
"""

from __future__ import annotations

import torch

from aligners.functional import check_matrix


def _pair(pred: torch.Tensor, true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pred, true = check_matrix(pred, "pred"), check_matrix(true, "true")
    if pred.shape != true.shape:
        raise ValueError(f"pred and true must have the same shape, got {tuple(pred.shape)} and {tuple(true.shape)}")
    return pred.to(torch.float64), true.to(torch.float64)


def mean_cosine(pred: torch.Tensor, true: torch.Tensor) -> float:
    """Mean over rows of cos(pred_i, true_i)."""
    p, t = _pair(pred, true)
    return float(torch.nn.functional.cosine_similarity(p, t, dim=1).mean())


def mean_baseline_cosine(true: torch.Tensor, mean: torch.Tensor | None = None) -> float:
    """The cosine a map would score by always predicting one vector: ``mean`` (e.g. the calibration data's target
    mean), or the mean of ``true`` itself when not given. Hidden states share a large common direction, so this is
    often already high; a map's cosine means something only beside it."""
    t = check_matrix(true, "true").to(torch.float64)
    m = t.mean(dim=0) if mean is None else mean.to(torch.float64)
    return float(torch.nn.functional.cosine_similarity(t, m.expand_as(t), dim=1).mean())


def centred_cosine(pred: torch.Tensor, true: torch.Tensor, mean: torch.Tensor | None = None) -> float:
    """Mean cosine after subtracting the target mean from both: the part of the cosine the common direction hides."""
    p, t = _pair(pred, true)
    m = t.mean(dim=0) if mean is None else mean.to(torch.float64)
    return float(torch.nn.functional.cosine_similarity(p - m, t - m, dim=1).mean())


def r2(pred: torch.Tensor, true: torch.Tensor) -> float:
    """1 − RSS / TSS with TSS about the column means of ``true`` (pooled over all dimensions)."""
    p, t = _pair(pred, true)
    tss = float((t - t.mean(dim=0)).square().sum())
    if tss == 0.0:
        raise ValueError("R² is undefined when the true states do not vary")
    return 1.0 - float((p - t).square().sum()) / tss


def retrieval_at_1(pred: torch.Tensor, true: torch.Tensor, max_candidates: int = 1000, seed: int = 0) -> float:
    """Fraction of mapped states whose nearest true state (by cosine) is their own pair.

    Uses at most ``max_candidates`` rows (a seeded random subset when there are more), all of them both queries and
    candidates, so chance level is 1 / min(n, max_candidates).
    """
    p, t = _pair(pred, true)
    n = p.shape[0]
    if n > max_candidates:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_candidates]
        p, t = p[idx.to(p.device)], t[idx.to(t.device)]
    sims = torch.nn.functional.normalize(p, dim=1) @ torch.nn.functional.normalize(t, dim=1).T
    hits = sims.argmax(dim=1) == torch.arange(p.shape[0], device=p.device)
    return float(hits.to(torch.float64).mean())


def evaluate(pred: torch.Tensor, true: torch.Tensor, target_mean: torch.Tensor | None = None) -> dict[str, float]:
    """All representation metrics at once, with the mean baseline beside the cosine."""
    return {
        "cosine": mean_cosine(pred, true),
        "mean_baseline_cosine": mean_baseline_cosine(true, target_mean),
        "centred_cosine": centred_cosine(pred, true, target_mean),
        "r2": r2(pred, true),
        "retrieval_at_1": retrieval_at_1(pred, true),
        "n": float(pred.shape[0]),
    }
