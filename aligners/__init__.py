"""Alignment maps between two models' hidden spaces: fit, apply, save and load.

    from aligners import build, load
    m = build("procrustes").fit(X, Y)        # X (n, d_src), Y (n, d_tgt)
    Y_hat = m.transform(X_new)
    m.save("map.safetensors", {"source": "smollm2"})
    m2, meta = load("map.safetensors")

Kinds: ``procrustes`` (orthogonal, training-free), ``linear`` and ``affine`` (ridge least squares), ``lora`` (a
rank-8 adapter on a frozen Procrustes or affine base), ``distill`` (least-squares init, then trained through the target
model; optionally with a residual MLP).
"""

from aligners import distill, linear, lora, procrustes  # noqa: F401  (registers the kinds)
from aligners.base import Aligner
from aligners.distill import Distill
from aligners.io import FORMAT_VERSION, MapFileError, load, read_header, save
from aligners.linear import Affine, Linear
from aligners.lora import LoRA
from aligners.procrustes import Procrustes
from aligners.registry import REGISTRY, NotFittedError, build

KINDS = tuple(sorted(REGISTRY))

__all__ = [
    "FORMAT_VERSION",
    "KINDS",
    "REGISTRY",
    "Affine",
    "Aligner",
    "Distill",
    "Linear",
    "LoRA",
    "MapFileError",
    "NotFittedError",
    "Procrustes",
    "build",
    "load",
    "read_header",
    "save",
]
