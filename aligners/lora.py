"""A rank-r LoRA adapter on top of a frozen base map: ŷ = base(x) + (α/r)·B(A(x̃)).

Follows litgpt's LoRA: rank r, alpha, scaling α/r, B initialised to zero so an untrained adapter equals its base.
x̃ = (x − μx)/sx standardises the input with the fit data's mean and RMS scale, and the residual the adapter learns
is trained in units of its RMS (folded back into B afterwards): hidden states have norms in the tens to thousands, and
Adam's step size is only meaningful on unit-scale data. The fitted map is still affine, so it applies like any other.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from aligners.base import Aligner
from aligners.functional import centred_frobenius, column_mean, compute_dtype
from aligners.registry import build, register

BASE_KINDS = ("procrustes", "affine", "linear")


def _split(n: int, val_fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=generator)
    n_val = max(1, round(n * val_fraction))
    return perm[n_val:], perm[:n_val]


@register
class LoRA(Aligner):
    """Rank-r adapter trained (Adam, minibatches, early stopping on a held-out split, seeded) on a frozen base."""

    kind = "lora"
    min_rows = 3

    def __init__(
        self,
        base: str = "procrustes",
        base_params: dict[str, Any] | None = None,
        rank: int = 8,
        alpha: float = 16.0,
        lr: float = 1e-3,
        batch_size: int = 256,
        max_epochs: int = 100,
        patience: int = 5,
        val_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if base not in BASE_KINDS:
            raise ValueError(f"base must be one of {list(BASE_KINDS)}, got {base!r}")
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        if alpha <= 0 or lr <= 0:
            raise ValueError(f"alpha and lr must be > 0, got alpha={alpha!r}, lr={lr!r}")
        if batch_size < 1 or max_epochs < 0 or patience < 1:
            raise ValueError("batch_size and patience must be >= 1 and max_epochs >= 0")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        self.base = base
        self.base_params = dict(base_params or {})
        self.base_map = build(base, **self.base_params)  # validates base_params now, not at fit time
        self.rank, self.alpha, self.lr = rank, float(alpha), float(lr)
        self.batch_size, self.max_epochs, self.patience = batch_size, max_epochs, patience
        self.val_fraction, self.seed = float(val_fraction), int(seed)

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def get_params(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "base_params": self.base_params,
            "rank": self.rank,
            "alpha": self.alpha,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "max_epochs": self.max_epochs,
            "patience": self.patience,
            "val_fraction": self.val_fraction,
            "seed": self.seed,
        }

    def expected_shapes(self, d_src: int, d_tgt: int) -> dict[str, tuple[int, ...]]:
        base = {f"base.{k}": v for k, v in self.base_map.expected_shapes(d_src, d_tgt).items()}
        return {**base, "lora_a": (self.rank, d_src), "lora_b": (d_tgt, self.rank), "x_mean": (d_src,), "x_scale": ()}

    def set_state(self, tensors: dict[str, torch.Tensor], d_src: int, d_tgt: int) -> None:
        super().set_state(tensors, d_src, d_tgt)
        base = {k.removeprefix("base."): v for k, v in tensors.items() if k.startswith("base.")}
        self.base_map.set_state(base, d_src, d_tgt)

    def _affine(self, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        base = {k.removeprefix("base."): v for k, v in tensors.items() if k.startswith("base.")}
        weight, bias = self.base_map._affine(base)
        t = {k: tensors[k].to(torch.float64) for k in ("lora_a", "lora_b", "x_mean", "x_scale")}
        delta = (self.scaling / t["x_scale"]) * (t["lora_b"] @ t["lora_a"])  # (d_tgt, d_src)
        return weight + delta, bias - delta @ t["x_mean"]

    def _fit(self, x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        generator = torch.Generator().manual_seed(self.seed)
        fit_idx, val_idx = _split(x.shape[0], self.val_fraction, generator)
        self.base_map.fit(x, y)
        dtype = compute_dtype(x)
        x_mean = column_mean(x)
        x_scale = (centred_frobenius(x, x_mean) / math.sqrt(x.numel())).clamp_min(1e-30)
        xs = (x.to(dtype) - x_mean.to(dtype)) / x_scale.to(dtype)  # (n, d_src), unit RMS
        resid = (y.to(dtype) - self.base_map.transform(x.to(dtype))).to(dtype)  # (n, d_tgt)
        r_scale = float(resid.square().mean().sqrt().clamp_min(1e-30))
        resid = resid / r_scale

        a, b, info = self._train(xs[fit_idx], resid[fit_idx], xs[val_idx], resid[val_idx], generator)
        base = {f"base.{k}": v for k, v in (self.base_map.tensors or {}).items()}
        tensors = {**base, "lora_a": a, "lora_b": b * r_scale, "x_mean": x_mean, "x_scale": x_scale}
        info["base_val_mse"] *= r_scale**2
        info["val_mse"] *= r_scale**2
        return tensors, info

    def _train(
        self, xf: torch.Tensor, rf: torch.Tensor, xv: torch.Tensor, rv: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Train A (r, d_src) and B (d_tgt, r) on unit-scale inputs and residuals; returns the best by val MSE."""
        d_src, d_tgt = xf.shape[1], rf.shape[1]
        a = torch.empty(self.rank, d_src, dtype=xf.dtype, device=xf.device)
        # litgpt initialises A like nn.Linear (Kaiming uniform, a=√5) and B to zero.
        bound = 1.0 / math.sqrt(d_src)
        a.copy_(torch.rand(a.shape, generator=generator).to(a) * 2 * bound - bound)
        b = torch.zeros(d_tgt, self.rank, dtype=xf.dtype, device=xf.device)
        a.requires_grad_(True)
        b.requires_grad_(True)
        opt = torch.optim.Adam([a, b], lr=self.lr)

        def val_mse() -> float:
            with torch.no_grad():
                return float((self.scaling * (xv @ a.T) @ b.T - rv).square().mean())

        best = val_mse()
        info = {"base_val_mse": best, "epochs": 0.0, "best_epoch": 0.0}
        best_state = (a.detach().clone(), b.detach().clone())
        stale = 0
        for epoch in range(1, self.max_epochs + 1):
            order = torch.randperm(xf.shape[0], generator=generator).to(xf.device)
            for start in range(0, xf.shape[0], self.batch_size):
                idx = order[start : start + self.batch_size]
                loss = (self.scaling * (xf[idx] @ a.T) @ b.T - rf[idx]).square().mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            current = val_mse()
            info["epochs"] = float(epoch)
            if current < best:
                best, stale = current, 0
                best_state = (a.detach().clone(), b.detach().clone())
                info["best_epoch"] = float(epoch)
            else:
                stale += 1
                if stale >= self.patience:
                    break
        info["val_mse"] = best
        return best_state[0], best_state[1], info
