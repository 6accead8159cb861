"""Orthogonal Procrustes: the training-free map of the original design (centred, Frobenius-normalised)."""

from __future__ import annotations

from typing import Any

import torch

from aligners.base import Aligner
from aligners.functional import procrustes_solve
from aligners.registry import register


@register
class Procrustes(Aligner):
    """ŷ = ((x − μx) / sx) Wᵀ · sy + μy with W (semi-)orthogonal, W = U Vᵀ from the SVD of Ynᵀ Xn.

    On the normalised data it agrees with ``scipy.linalg.orthogonal_procrustes(Xn, Yn)`` (whose R is Wᵀ); when
    d_src != d_tgt, W has orthonormal rows or columns, whichever is fewer.
    """

    kind = "procrustes"

    def __init__(self) -> None:
        super().__init__()

    def get_params(self) -> dict[str, Any]:
        return {}

    def expected_shapes(self, d_src: int, d_tgt: int) -> dict[str, tuple[int, ...]]:
        return {"weight": (d_tgt, d_src), "x_mean": (d_src,), "y_mean": (d_tgt,), "x_scale": (), "y_scale": ()}

    def _fit(self, x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        tensors = procrustes_solve(x, y)
        return tensors, {"x_scale": float(tensors["x_scale"]), "y_scale": float(tensors["y_scale"])}

    def _affine(self, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        t = {k: v.to(torch.float64) for k, v in tensors.items()}
        weight = t["weight"] * (t["y_scale"] / t["x_scale"])
        return weight, t["y_mean"] - weight @ t["x_mean"]
