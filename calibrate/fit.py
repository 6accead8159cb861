"""The fitting sweep: paired states from both models -> one map per (direction, source layer, target layer, method).

For each direction the calibration passages are split by passage into a fitting part and a held-out part (10%);
maps are fitted on the fitting part's token pairs and scored on the held-out pairs (cosine beside the mean baseline,
centred cosine, R², retrieval@1).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from aligners import Aligner, build, metrics
from calibrate.pairing import pair_indices
from calibrate.store import MapKey, MapStore
from service.runtime.encode import Encoded
from service.runtime.handover import matching_layer
from service.runtime.loading import LoadedModel

# Larger batches and step size than the aligner defaults: a sweep fits dozens of adapters on ~10^5 pairs each.
_LORA: dict[str, Any] = {"batch_size": 512, "lr": 3e-3, "max_epochs": 40, "patience": 3}

# Method names of the sweep -> (aligner kind, parameters). "lora" is the research summary's hybrid: a rank-8 adapter
# on the training-free Procrustes map; "lora-affine" puts it on the least-squares map instead.
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "procrustes": ("procrustes", {}),
    "linear": ("linear", {}),
    "affine": ("affine", {}),
    "lora": ("lora", {"base": "procrustes", **_LORA}),
    "lora-affine": ("lora", {"base": "affine", **_LORA}),
}


def make_aligner(method: str, seed: int) -> Aligner:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    kind, params = METHODS[method]
    seeded = {**params, "seed": seed} if kind in ("linear", "affine", "lora") else params
    return build(kind, **seeded)


@dataclass
class Side:
    """One model with its encoded calibration passages."""

    name: str
    model: LoadedModel
    encoded: list[Encoded]


@dataclass
class FitResult:
    key: MapKey
    metrics: dict[str, float]
    fit_seconds: float
    n_fit: int
    n_heldout: int
    extra: dict[str, Any] = field(default_factory=dict)


def layer_pairs(
    source_layers: list[int], target_layers: list[int] | None, n_src: int, n_tgt: int, full: bool
) -> list[tuple[int, int]]:
    """Every (source, target) pair to fit: each source layer with each listed target layer (or the target layer at
    the same relative depth), plus, with ``full``, the per-layer maps for target layers below each target layer."""
    pairs: set[tuple[int, int]] = set()
    for ls in source_layers:
        targets = target_layers if target_layers is not None else [matching_layer(ls, n_src, n_tgt)]
        for lt in targets:
            pairs.add((ls, lt))
            if full:
                pairs.update((matching_layer(k, n_tgt, n_src), k) for k in range(lt))
    return sorted(pairs)


def _split_passages(n: int, seed: int, heldout_fraction: float = 0.1) -> tuple[list[int], list[int]]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_held = max(1, round(n * heldout_fraction)) if n > 1 else 0
    return sorted(order[n_held:]), sorted(order[:n_held])


def gather(src: Side, tgt: Side, items: list[int], ls: int, lt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Paired rows (source at ls, target at lt) over the given passages, float32."""
    xs, ys = [], []
    for i in items:
        a, b = src.encoded[i], tgt.encoded[i]
        si, ti = pair_indices(a.offsets, b.offsets)
        xs.append(a.states[ls][si])
        ys.append(b.states[lt][ti])
    return torch.cat(xs).float(), torch.cat(ys).float()


def sweep(
    src: Side,
    tgt: Side,
    pairs: list[tuple[int, int]],
    methods: list[str],
    store: MapStore,
    metadata: dict[str, Any],
    seed: int = 0,
) -> list[FitResult]:
    """Fit and save every method for every layer pair of one direction."""
    fit_idx, held_idx = _split_passages(len(src.encoded), seed)
    results = []
    bar = tqdm(total=len(pairs) * len(methods), desc=f"fit {src.name}->{tgt.name}", unit="map")
    for ls, lt in pairs:
        x, y = gather(src, tgt, fit_idx, ls, lt)
        xh, yh = gather(src, tgt, held_idx, ls, lt)
        for method in methods:
            start = time.perf_counter()
            aligner = make_aligner(method, seed).fit(x, y)
            seconds = time.perf_counter() - start
            scores = metrics.evaluate(aligner.transform(xh), yh, target_mean=y.mean(dim=0)) if len(xh) > 1 else {}
            key = MapKey(src.name, tgt.name, ls, lt, method)
            meta = {
                **metadata,
                "source_fingerprint": src.model.fingerprint,
                "target_fingerprint": tgt.model.fingerprint,
                "source_spec": src.model.spec,
                "target_spec": tgt.model.spec,
                "n_pairs_fit": int(x.shape[0]),
                "n_pairs_heldout": int(xh.shape[0]),
                "n_passages_fit": len(fit_idx),
                "fit_seconds": seconds,
            }
            store.save(key, aligner, meta, scores)
            results.append(FitResult(key, scores, seconds, int(x.shape[0]), int(xh.shape[0])))
            bar.update(1)
            bar.set_postfix_str(f"L{ls}->L{lt} {method} r2={scores.get('r2', float('nan')):.3f}")
    bar.close()
    return results
