"""A map trained through the target model: least-squares init, then refined against what the target does.

``fit(X, Y)`` gives the least-squares map (``init="linear"`` or ``"affine"``), so an untrained ``distill`` map equals
that map exactly. Its ``module()`` is a trainable ``MapModule`` (the affine map plus, with ``hidden > 0``, a
zero-initialised residual MLP); training code (``calibrate.trainer``) optimises that module through the frozen
target and installs the result with ``set_module``. Without the MLP the fitted map stays affine and applies on the
shared fast path; with it, ``transform`` runs the module.
"""

from __future__ import annotations

from typing import Any

import torch

from aligners.base import Aligner
from aligners.functional import check_matrix, compute_dtype, ridge_solve
from aligners.modules import MapModule, mlp_shapes
from aligners.registry import NotFittedError, register

INITS = ("linear", "affine")


@register
class Distill(Aligner):
    """ŷ = W x + b (+ MLP(x) when ``hidden`` > 0), initialised by ridge least squares, trained through the target."""

    kind = "distill"

    def __init__(self, init: str = "linear", hidden: int = 0, lam: float | None = None, seed: int = 0) -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init must be one of {list(INITS)}, got {init!r}")
        if not isinstance(hidden, int) or hidden < 0:
            raise ValueError(f"hidden must be an integer >= 0 (0 = no residual MLP), got {hidden!r}")
        if lam is not None and (not isinstance(lam, (int, float)) or lam < 0):
            raise ValueError(f"lam must be a number >= 0 or None, got {lam!r}")
        self.init, self.hidden = init, hidden
        self.lam = None if lam is None else float(lam)
        self.seed = int(seed)
        self._modules: dict[torch.device, MapModule] = {}

    @property
    def min_rows(self) -> int:  # type: ignore[override]
        return 1 if self.lam is not None else 3

    def get_params(self) -> dict[str, Any]:
        return {"init": self.init, "hidden": self.hidden, "lam": self.lam, "seed": self.seed}

    def expected_shapes(self, d_src: int, d_tgt: int) -> dict[str, tuple[int, ...]]:
        return {"weight": (d_tgt, d_src), "bias": (d_tgt,), **mlp_shapes(d_src, d_tgt, self.hidden)}

    def _fit(self, x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        tensors, info = ridge_solve(x, y, self.init == "affine", self.lam, 0.1, self.seed)
        weight = tensors["weight"].float()
        bias = tensors["bias"].float() if "bias" in tensors else torch.zeros(weight.shape[0])
        module = MapModule(weight, bias, self.hidden, seed=self.seed)
        return module.tensors(), {**info, "train_steps": 0.0}

    def _affine(self, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.hidden:
            raise TypeError("a distill map with a residual MLP is not affine")
        return tensors["weight"].to(torch.float64), tensors["bias"].to(torch.float64)

    def set_state(self, tensors: dict[str, torch.Tensor], d_src: int, d_tgt: int) -> None:
        super().set_state(tensors, d_src, d_tgt)
        self._modules = {}

    def module(self) -> MapModule:
        """A trainable float32 copy of the fitted map (changes reach this aligner only through ``set_module``)."""
        if self.tensors is None:
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit(X, Y) or load a map first")
        return MapModule.from_tensors(self.tensors, self.hidden)

    def set_module(self, module: MapModule, info: dict[str, float] | None = None) -> None:
        """Install a trained module's parameters as this map's fitted state."""
        self.set_state(module.tensors(), self.d_src, self.d_tgt)
        self.fit_info.update(info or {})

    def transform(self, X: torch.Tensor) -> torch.Tensor:  # noqa: N803
        if not self.hidden:
            return super().transform(X)
        if self.tensors is None:
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit(X, Y) or load a map first")
        x = check_matrix(X, "X")
        if x.shape[1] != self.d_src:
            raise ValueError(f"X has width {x.shape[1]}, but this map was fitted for width d_src={self.d_src}")
        if x.device not in self._modules:
            self._modules[x.device] = self.module().to(x.device).requires_grad_(False)
        with torch.no_grad():
            return self._modules[x.device](x.to(torch.float32)).to(compute_dtype(x)).to(x.dtype)
