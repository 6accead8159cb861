"""The estimator base class every alignment map derives from, and the registry that names them.

An aligner follows scikit-learn's contract: ``__init__`` stores typed keyword hyper-parameters only, ``fit(X, Y)``
sets fitted tensors and returns ``self``, ``transform(X)`` maps (n, d_src) -> (n, d_tgt). Every map in this package
is affine once fitted (a LoRA adapter on an affine base included), so ``transform`` applies one cached (weight, bias)
pair cast to the input's device and dtype; the families differ only in how they fit and what they store.

A map into a layer above the target's input embeddings may carry a ``readout``: an affine map from the same source
states into the target's input embeddings (the map ``fit`` trained into layer 0 from the same source layers). It
reads the token-identity part of the handed-over states, which the target's residual stream carries up unchanged,
so that a snap toward the target's vocabulary can correct it at any layer (``service.runtime.snap``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from aligners.functional import check_matrix, check_pair, compute_dtype
from aligners.io import save
from aligners.registry import NotFittedError


class Aligner:
    """Base class: validation, the fitted state, and the shared affine apply path."""

    kind: ClassVar[str] = ""
    min_rows: ClassVar[int] = 2

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] | None = None
        self.fit_info: dict[str, float] = {}
        self.d_src = 0
        self.d_tgt = 0
        self.readout: tuple[torch.Tensor, torch.Tensor] | None = None  # (weight (d_tgt, d_src), bias (d_tgt,))
        self._cast: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    # --- subclass hooks -------------------------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """Hyper-parameters as JSON-serialisable values; ``type(self)(**get_params())`` rebuilds an unfitted copy."""
        raise NotImplementedError

    def _fit(self, x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Return the fitted tensors and fit information (floats) for validated inputs."""
        raise NotImplementedError

    def _affine(self, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The fitted map as float64 (weight (d_tgt, d_src), bias (d_tgt,)), so that ŷ = x Wᵀ + b."""
        raise NotImplementedError

    def expected_shapes(self, d_src: int, d_tgt: int) -> dict[str, tuple[int, ...]]:
        """Names and shapes of the tensors a fitted map of these dims stores (checked on load)."""
        raise NotImplementedError

    # --- public API -----------------------------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self.tensors is not None

    def fit(self, X: torch.Tensor, Y: torch.Tensor) -> Aligner:  # noqa: N803 (estimator convention)
        """Fit the map from paired rows X (n, d_src) and Y (n, d_tgt); returns self."""
        x, y = check_pair(X, Y, self.min_rows)
        tensors, info = self._fit(x, y)
        self.set_state(tensors, x.shape[1], y.shape[1])
        self.fit_info = {**info, "n_samples": float(x.shape[0])}
        return self

    def transform(self, X: torch.Tensor) -> torch.Tensor:  # noqa: N803
        """Map X (n, d_src) to (n, d_tgt), on X's device and in X's dtype (half inputs computed in float32)."""
        if self.tensors is None:
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit(X, Y) or load a map first")
        x = check_matrix(X, "X")
        if x.shape[1] != self.d_src:
            raise ValueError(f"X has width {x.shape[1]}, but this map was fitted for width d_src={self.d_src}")
        weight, bias = self.affine_on(x.device, compute_dtype(x))
        return torch.addmm(bias, x.to(weight.dtype), weight.T).to(x.dtype)

    def read_tokens(self, X: torch.Tensor) -> torch.Tensor:  # noqa: N803
        """The ``readout``'s input embeddings for X (n, d_src) -> (n, d_tgt), in X's dtype (computed in float32)."""
        if self.readout is None:
            raise ValueError(f"this {type(self).__name__} has no readout into the target's input embeddings")
        weight, bias = self.readout
        x = check_matrix(X, "X")
        out = torch.addmm(bias.to(x.device, torch.float32), x.float(), weight.to(x.device, torch.float32).T)
        return out.to(x.dtype)

    def set_readout(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Carry a readout into the target's input embeddings (an affine map of this map's own input width)."""
        if tuple(weight.shape) != (self.d_tgt, self.d_src) or tuple(bias.shape) != (self.d_tgt,):
            raise ValueError(
                f"a readout for this {self.d_src}->{self.d_tgt} map needs weight ({self.d_tgt}, {self.d_src}) and bias "
                f"({self.d_tgt},), got {tuple(weight.shape)} and {tuple(bias.shape)}"
            )
        self.readout = (weight.detach().float().cpu(), bias.detach().float().cpu())

    def __call__(self, X: torch.Tensor) -> torch.Tensor:  # noqa: N803
        return self.transform(X)

    def affine_on(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The fitted (weight, bias) cast to a device and dtype, cached so repeated calls copy nothing."""
        if self.tensors is None:
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet")
        key = (torch.device(device), dtype)
        if key not in self._cast:
            weight, bias = self._affine(self.tensors)
            self._cast[key] = (weight.to(device=device, dtype=dtype), bias.to(device=device, dtype=dtype))
        return self._cast[key]

    def set_state(self, tensors: dict[str, torch.Tensor], d_src: int, d_tgt: int) -> None:
        """Install fitted tensors (from ``_fit`` or a map file) after checking their names and shapes."""
        expected = self.expected_shapes(d_src, d_tgt)
        if set(tensors) != set(expected):
            raise ValueError(f"{self.kind} map needs tensors {sorted(expected)}, got {sorted(tensors)}")
        for name, shape in expected.items():
            if tuple(tensors[name].shape) != shape:
                raise ValueError(
                    f"{self.kind} tensor {name!r} has shape {tuple(tensors[name].shape)}, expected {shape}"
                )
        self.tensors = {name: t.detach() for name, t in tensors.items()}
        self.d_src, self.d_tgt = d_src, d_tgt
        self._cast = {}

    def save(self, path: str, metadata: dict[str, Any] | None = None) -> None:
        """Write the fitted map as a self-describing safetensors file (see ``aligners.io``)."""
        save(self, path, metadata)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        dims = f", fitted {self.d_src}->{self.d_tgt}" if self.is_fitted else ""
        return f"{type(self).__name__}({params}{dims})"
