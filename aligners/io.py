"""The map file format: one safetensors file per fitted map, with string metadata that describes it fully.

Header keys written by ``save``:
    format          "interlingua.aligner"
    format_version  FORMAT_VERSION (loading refuses other versions)
    kind            registry name of the aligner ("procrustes", "linear", "affine", "lora")
    params          JSON of the hyper-parameters (``get_params()``)
    d_src, d_tgt    widths of the map
    fit_info        JSON of the fit information (chosen λ, held-out errors, sample count, ...)
    meta.<key>      JSON of each caller-supplied metadata value (models, fingerprints, layers, data, metrics, ...)
Tensors are the aligner's fitted state under their own names, and a readout's (``Aligner.readout``) as
``readout.weight`` and ``readout.bias``. Nothing is pickled.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from aligners.registry import REGISTRY, NotFittedError

if TYPE_CHECKING:
    from aligners.base import Aligner

FORMAT = "interlingua.aligner"
FORMAT_VERSION = "1"
READOUT = ("readout.weight", "readout.bias")
META_PREFIX = "meta."


class MapFileError(ValueError):
    """A map file that cannot be loaded: unreadable, corrupt, of an unknown kind or an unsupported version."""


def save(aligner: Aligner, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> None:
    """Write a fitted aligner to ``path`` (parent folders are created). Metadata values must be JSON-serialisable."""
    if aligner.tensors is None:
        raise NotFittedError(f"cannot save an unfitted {type(aligner).__name__}: call fit(X, Y) first")
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": aligner.kind,
        "params": json.dumps(aligner.get_params(), sort_keys=True),
        "d_src": str(aligner.d_src),
        "d_tgt": str(aligner.d_tgt),
        "fit_info": json.dumps(aligner.fit_info, sort_keys=True),
    }
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"metadata keys must be non-empty strings, got {key!r}")
        try:
            header[META_PREFIX + key] = json.dumps(value, sort_keys=True)
        except TypeError as err:
            raise TypeError(f"metadata value for {key!r} is not JSON-serialisable: {err}") from None
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in aligner.tensors.items()}
    if aligner.readout is not None:
        tensors.update({name: t.contiguous() for name, t in zip(READOUT, aligner.readout, strict=True)})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    save_file(tensors, tmp, metadata=header)
    os.replace(tmp, path)  # a reader never sees a half-written map


def read_header(path: str | os.PathLike[str]) -> dict[str, str]:
    """The raw string header of a map file, checked for format and version."""
    if not os.path.isfile(path):
        raise MapFileError(f"{path}: no such map file")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = dict(f.metadata() or {})
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise MapFileError(f"{path}: not a readable safetensors file ({err})") from None
    if header.get("format") != FORMAT:
        raise MapFileError(f"{path}: not an interlingua map (header 'format' is {header.get('format')!r})")
    if header.get("format_version") != FORMAT_VERSION:
        version = header.get("format_version")
        raise MapFileError(f"{path}: unsupported map format version {version!r}; this build reads {FORMAT_VERSION!r}")
    return header


def load(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[Aligner, dict[str, Any]]:
    """Load a map file; returns (fitted aligner, caller metadata decoded from JSON)."""
    header = read_header(path)
    kind = header.get("kind", "")
    if kind not in REGISTRY:
        raise MapFileError(f"{path}: unknown map kind {kind!r}; known kinds: {sorted(REGISTRY)}")
    try:
        params = json.loads(header["params"])
        d_src, d_tgt = int(header["d_src"]), int(header["d_tgt"])
        fit_info = json.loads(header.get("fit_info", "{}"))
        metadata = {k.removeprefix(META_PREFIX): json.loads(v) for k, v in header.items() if k.startswith(META_PREFIX)}
        aligner = REGISTRY[kind](**params)
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        readout = [tensors.pop(name) for name in READOUT if name in tensors]
        aligner.set_state(tensors, d_src, d_tgt)
        if readout:
            if len(readout) != len(READOUT):
                raise ValueError(f"a readout needs both {' and '.join(READOUT)}")
            aligner.set_readout(*readout)
    except MapFileError:
        raise
    except Exception as err:
        raise MapFileError(f"{path}: invalid {kind} map ({type(err).__name__}: {err})") from None
    aligner.fit_info = fit_info
    return aligner, metadata
