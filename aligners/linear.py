"""Least-squares maps: ``Linear`` (no bias) and ``Affine`` (with bias), both ridge-regularised, solved in float64."""

from __future__ import annotations

from typing import Any

import torch

from aligners.base import Aligner
from aligners.functional import ridge_solve
from aligners.registry import register


class _Ridge(Aligner):
    """Shared fitting for the least-squares maps; ``centre`` decides whether an intercept is fitted."""

    centre = False

    def __init__(self, lam: float | None = None, val_fraction: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        if lam is not None and (not isinstance(lam, (int, float)) or lam < 0):
            raise ValueError(f"lam must be a number >= 0 or None (choose on a held-out split), got {lam!r}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        self.lam = None if lam is None else float(lam)
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)

    @property
    def min_rows(self) -> int:  # type: ignore[override]
        return 1 if self.lam is not None else 3

    def get_params(self) -> dict[str, Any]:
        return {"lam": self.lam, "val_fraction": self.val_fraction, "seed": self.seed}

    def _fit(self, x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        return ridge_solve(x, y, self.centre, self.lam, self.val_fraction, self.seed)


@register
class Linear(_Ridge):
    """ŷ = x Wᵀ, W = argmin ‖X Wᵀ − Y‖² + λ‖W‖² (λ chosen on a held-out split when not given)."""

    kind = "linear"

    def expected_shapes(self, d_src: int, d_tgt: int) -> dict[str, tuple[int, ...]]:
        return {"weight": (d_tgt, d_src)}

    def _affine(self, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        weight = tensors["weight"].to(torch.float64)
        return weight, torch.zeros(weight.shape[0], dtype=torch.float64, device=weight.device)


@register
class Affine(_Ridge):
    """ŷ = x Wᵀ + b; the ridge penalty applies to W only (both sides centred with the fit data's means)."""

    kind = "affine"
    centre = True

    def expected_shapes(self, d_src: int, d_tgt: int) -> dict[str, tuple[int, ...]]:
        return {"weight": (d_tgt, d_src), "bias": (d_tgt,)}

    def _affine(self, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return tensors["weight"].to(torch.float64), tensors["bias"].to(torch.float64)
