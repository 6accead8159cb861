"""Differentiable maps as ``torch.nn.Module``s, for map kinds that are trained by gradient descent.

``MapModule``: ŷ = x Wᵀ + b + MLP(x̂), where the optional residual MLP reads x̂ = x / rms(x) (hidden states carry a
few huge outlier dimensions; a parameter-free RMS normalisation keeps the MLP's input at unit scale) and its output
layer starts at zero, so a fresh module equals its affine part exactly. Its parameters round-trip through a flat
dict of tensors (the map file's contents).
"""

from __future__ import annotations

import torch
from torch import nn

MLP_KEYS = ("mlp_in.weight", "mlp_in.bias", "mlp_out.weight", "mlp_out.bias")


def mlp_shapes(d_src: int, d_tgt: int, hidden: int) -> dict[str, tuple[int, ...]]:
    if not hidden:
        return {}
    shapes = ((hidden, d_src), (hidden,), (d_tgt, hidden), (d_tgt,))
    return dict(zip(MLP_KEYS, shapes, strict=True))


class MapModule(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, hidden: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().to(torch.float32).clone())  # (d_tgt, d_src)
        self.bias = nn.Parameter(bias.detach().to(torch.float32).clone())  # (d_tgt,)
        self.hidden = hidden
        self.in_scale: torch.Tensor | None = None  # set while training: see ``precondition``
        self.out_scale: torch.Tensor | None = None
        self.mlp_in: nn.Linear | None = None
        self.mlp_out: nn.Linear | None = None
        if hidden:
            d_tgt, d_src = self.weight.shape
            generator = torch.Generator().manual_seed(seed)
            self.mlp_in = nn.Linear(d_src, hidden)
            self.mlp_out = nn.Linear(hidden, d_tgt)
            with torch.no_grad():
                self.mlp_in.weight.normal_(0.0, d_src**-0.5, generator=generator)
                self.mlp_in.bias.zero_()
                self.mlp_out.weight.zero_()  # untrained = the affine map
                self.mlp_out.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d_src) -> (..., d_tgt)."""
        y = self.affine(x)
        if self.mlp_in is not None and self.mlp_out is not None:
            y = y + self.mlp_out(torch.nn.functional.gelu(self.mlp_in(self.mlp_input(x))))
        return y

    def affine(self, x: torch.Tensor, scaled_out: bool = True) -> torch.Tensor:
        """The affine part x Wᵀ + b (with ``scaled_out`` False and an output scale: before it multiplies)."""
        scaled = x if self.in_scale is None else x / self.in_scale
        y = torch.nn.functional.linear(scaled, self.weight, self.bias)
        return y * self.out_scale if scaled_out and self.out_scale is not None else y

    @staticmethod
    def mlp_input(x: torch.Tensor) -> torch.Tensor:
        """What the residual MLP reads: x / rms(x), per row."""
        return x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + 1e-6)

    def precondition(self, scale: torch.Tensor, out: torch.Tensor | None = None) -> None:
        """Hold the weight as W·diag(``scale``) and divide inputs by ``scale`` (the same map): gradient steps that are
        the same size for every entry (Adam's) then move each input dimension's share of the output alike, however
        large that dimension runs (hidden states carry a few dimensions hundreds of times larger than the rest). With
        ``out`` (one scale per output dimension) also hold W and b divided by it row by row and multiply the affine
        part's outputs by it: each output dimension then moves by steps of its own size."""
        if self.in_scale is not None:
            raise RuntimeError("this module is already preconditioned")
        with torch.no_grad():
            self.weight.mul_(scale)
            if out is not None:
                self.weight.div_(out[:, None])
                self.bias.div_(out)
        self.in_scale = scale.detach().to(self.weight.device, torch.float32)
        if out is not None:
            self.out_scale = out.detach().to(self.weight.device, torch.float32)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The parameters as a flat dict of detached CPU float32 tensors (``weight``, ``bias``, ``mlp_*``), the weight
        and bias as the map applies them to unscaled inputs, unscaled outputs."""
        out = {name: p.detach().to("cpu", torch.float32).clone() for name, p in self.named_parameters()}
        if self.in_scale is not None:
            out["weight"] = out["weight"] / self.in_scale.cpu()
        if self.out_scale is not None:
            out["weight"] = out["weight"] * self.out_scale.cpu()[:, None]
            out["bias"] = out["bias"] * self.out_scale.cpu()
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], hidden: int) -> MapModule:
        module = cls(tensors["weight"], tensors["bias"], hidden)
        module.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()})
        return module
