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

from aligners import Aligner, Distill, build, metrics
from aligners.registry import takes_seed
from aligners.store import MapKey, MapStore, best_first, layers_name, matching_layer
from calibrate.layers import AUTO
from calibrate.trainer import Through
from service.runtime.encode import Encoded
from service.runtime.loading import LoadedModel
from service.runtime.pairing import pair_indices, piece_pairs

# Larger batches and step size than the aligner defaults: a sweep fits dozens of adapters on ~10^5 pairs each.
_LORA: dict[str, Any] = {"batch_size": 512, "lr": 3e-3, "max_epochs": 40, "patience": 3}

# Method names of the sweep -> (aligner kind, parameters). "lora" is the design's hybrid: a rank-8 adapter
# on the training-free Procrustes map; "lora-affine" puts it on the least-squares map instead.
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "procrustes": ("procrustes", {}),
    "linear": ("linear", {}),
    "affine": ("affine", {}),
    "lora": ("lora", {"base": "procrustes", **_LORA}),
    "lora-affine": ("lora", {"base": "affine", **_LORA}),
    # Least-squares init, then trained through the target (``calibrate.trainer``); needs probes and a teacher.
    "distill": ("distill", {}),
    "distill-mlp": ("distill", {"hidden": 1024}),  # plus a zero-initialised residual MLP
}
TRAINED = ("distill", "distill-mlp")


def make_aligner(method: str, seed: int) -> Aligner:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    kind, params = METHODS[method]
    seeded = {**params, "seed": seed} if takes_seed(kind) else params
    return build(kind, **seeded)


@dataclass
class Side:
    """One model with its encoded calibration passages."""

    name: str
    model: LoadedModel
    encoded: list[Encoded]


@dataclass
class MapResult:
    """One fitted map: its key, held-out scores and what fitting it took."""

    key: MapKey
    metrics: dict[str, float]
    fit_seconds: float
    n_fit: int
    n_heldout: int
    extra: dict[str, Any] = field(default_factory=dict)


# Source layers of one map: one layer, or several whose states are concatenated per token (ascending).
Group = tuple[int, ...]


def layer_pairs(
    source_layers: list[Group], target_layers: list[int] | None, n_src: int, n_tgt: int, full: bool
) -> list[tuple[Group, int]]:
    """Every (source layers, target layer) pair to fit: each source layer group with each listed target layer (or,
    with none listed, with the target's input embeddings, layer 0, and the target layer at the same relative depth as
    the group's deepest layer), plus, with ``full``, the single-layer maps for target layers below each target
    layer."""
    pairs: set[tuple[Group, int]] = set()
    for ls in source_layers:
        targets = target_layers if target_layers is not None else [0, matching_layer(ls[-1], n_src, n_tgt)]
        for lt in targets:
            pairs.add((ls, lt))
            if full:
                pairs.update(((matching_layer(k, n_tgt, n_src),), k) for k in range(lt))
    return sorted(pairs)


def split_passages(n: int, seed: int, heldout_fraction: float = 0.1) -> tuple[list[int], list[int]]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_held = max(1, round(n * heldout_fraction)) if n > 1 else 0
    return sorted(order[n_held:]), sorted(order[:n_held])


# How calibration pairs tokens across the two tokenizers: "end" pairs tokens whose spans end at the same character
# (``pair_indices``), for every target layer; "span" pairs each source token with the target's own token for the same
# characters (``piece_pairs``) where the map goes into the target's input embeddings, which read no context.
PAIRINGS = ("end", "span")


def gather(
    src: Side, tgt: Side, items: list[int], ls: int | Group, lt: int, pairing: str = "end"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paired rows (source at ls, one layer or several concatenated; target at lt) over the given passages,
    float32."""
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {', '.join(PAIRINGS)}, got {pairing!r}")
    xs, ys = [], []
    for i in items:
        a, b = src.encoded[i], tgt.encoded[i]
        if pairing == "span" and lt == 0:
            si, ids = piece_pairs(a.text, a.offsets, tgt.model.tokenize_pieces)
            xs.append(a.at(ls)[si])
            ys.append(tgt.model.stack.embed(torch.tensor([ids], dtype=torch.long))[0].float().cpu())
            continue
        si, ti = pair_indices(a.offsets, b.offsets)
        xs.append(a.at(ls)[si])
        ys.append(b.states[lt][ti])
    return torch.cat(xs).float(), torch.cat(ys).float()


def set_snap(
    aligner: Aligner,
    scores: dict[str, float],
    through: Through | None,
    encoded: list[Encoded],
    ls: int | Group,
    lt: int,
    snaps: tuple[float, ...],
) -> None:
    """For a map into the target's input embeddings, record the snap weight the runtime applies
    (``fit_info["snap"]``): among ``snaps`` the one with the lowest proxy KL, or without a proxy the first. ``kl``
    becomes the map's KL as served; ``kl_no_snap`` keeps its KL without one."""
    if lt != 0:
        return
    weight = snaps[0]
    if through is not None and "kl" in scores:
        weight, kls = through.choose_snap(aligner, encoded, ls, list(snaps), scores["kl"])
        scores["kl_no_snap"], scores["kl"] = scores["kl"], kls[weight]
    aligner.fit_info["snap"] = weight
    scores["snap"] = weight


def train_weight(
    train_snap: float | str,
    through: Through,
    init: Aligner,
    encoded: list[Encoded],
    ls: int | Group,
    snaps: tuple[float, ...],
    init_kl: float,
) -> float:
    """The snap weight a map into layer 0 is trained through: ``train_snap``, or with ``AUTO`` the weight among
    ``snaps`` with the lowest proxy KL for its least-squares start ``init`` (whose own KL is ``init_kl``); below 1."""
    weight = through.choose_snap(init, encoded, ls, list(snaps), init_kl)[0] if train_snap == AUTO else train_snap
    assert isinstance(weight, float)
    return weight if weight < 1 else 0.0


@dataclass(frozen=True)
class SweepOptions:
    """How one direction's maps are fitted and which are trained (``FitConfig.sweep_options``). ``rank_by``: the
    proxy that ranks the least-squares starts for training, ``kl`` (held-out probes of the calibration text) or
    ``kl_xsrc`` (probes on passages of another source, ``HeldOutSource``)."""

    methods: tuple[str, ...]
    seed: int = 0
    train_top: int = 1
    pairing: str = "end"
    snaps: tuple[float, ...] = (0.0,)
    train_snap: float | str = 0.0
    rank_by: str = "kl"


@dataclass
class HeldOutSource:
    """The proxy on passages of a source the maps are not calibrated on: the target's probes on them (all held out)
    and the source model's states of them."""

    through: Through
    encoded: list[Encoded]

    def score(self, aligner: Aligner, ls: int | Group, lt: int) -> float:
        """The map's KL on these probes as it is served (with its snap weight, for a map into layer 0)."""
        return self.through.score(aligner, self.encoded, ls, lt, float(aligner.fit_info.get("snap", 0.0)))


@dataclass
class Direction:
    """One direction of a fit: both sides, the layer pairs, where maps go, and the target's probes (or None)."""

    src: Side
    tgt: Side
    pairs: list[tuple[Group, int]]
    store: MapStore
    metadata: dict[str, Any]
    through: Through | None = None
    helpers: set[tuple[Group, int]] = field(default_factory=set)
    xsrc: HeldOutSource | None = None  # the proxy on another source, scored beside ``through``'s (``kl_xsrc``)

    def split(self, seed: int) -> tuple[list[int], list[int]]:
        return split_passages(len(self.src.encoded), seed)

    def meta(self, x: torch.Tensor, xh: torch.Tensor, n_fit: int) -> dict[str, Any]:
        src, tgt = self.src.model, self.tgt.model
        return {
            **self.metadata,
            "source_fingerprint": src.fingerprint,
            "target_fingerprint": tgt.fingerprint,
            "source_spec": src.spec,
            "target_spec": tgt.spec,
            "n_pairs_fit": int(x.shape[0]),
            "n_pairs_heldout": int(xh.shape[0]),
            "n_passages_fit": n_fit,
        }


Pairs = dict[tuple[Group, int], tuple[torch.Tensor, ...]]  # (x, y, x held out, y held out) per layer pair


@dataclass
class Start:
    """A least-squares start for training: its layer pair, the map and its proxy KL."""

    ls: Group
    lt: int
    init: Aligner
    kl: float
    rank: float  # the score of ``SweepOptions.rank_by`` that ranks it (``kl`` itself by default)


def sweep(d: Direction, opts: SweepOptions) -> list[MapResult]:
    """Fit and save every method for every layer pair of one direction (``fit_closed_form``), then train the trained
    kinds from the best least-squares starts (``train_best``).

    With ``d.through`` (probes and the target's own behaviour on them), every map is also scored by the held-out KL
    of the target reading the probes after the handover (``kl``, lower is better). ``d.helpers`` are the per-layer
    pairs only the ``full`` mode needs: fitted, never trained. Every map into layer 0 gets the snap weight among
    ``opts.snaps`` with the lowest proxy KL (``choose_snap``; the first without a proxy).
    """
    trained = [m for m in opts.methods if m in TRAINED]
    if trained and d.through is None:
        raise ValueError(f"method(s) {trained} train through the target and need probes (a teacher)")
    results, data = fit_closed_form(d, opts)
    if trained and d.through is not None:
        results += train_best(d, d.through, data, opts)
    return results


def fit_closed_form(d: Direction, opts: SweepOptions) -> tuple[list[MapResult], Pairs]:
    """Every method that is not trained, for every layer pair, scored and saved; returns the paired rows too."""
    src, tgt, through = d.src, d.tgt, d.through
    fit_idx, held_idx = d.split(opts.seed)
    closed = [m for m in opts.methods if m not in TRAINED]
    results = []
    data: Pairs = {}
    bar = tqdm(total=len(d.pairs) * len(closed), desc=f"fit {src.name}->{tgt.name}", unit="map")
    for ls, lt in d.pairs:
        x, y = gather(src, tgt, fit_idx, ls, lt, opts.pairing)
        xh, yh = gather(src, tgt, held_idx, ls, lt, opts.pairing)
        data[(ls, lt)] = (x, y, xh, yh)
        for method in closed:
            start = time.perf_counter()
            aligner = make_aligner(method, opts.seed).fit(x, y)
            seconds = time.perf_counter() - start
            scores = metrics.evaluate(aligner.transform(xh), yh, target_mean=y.mean(dim=0)) if len(xh) > 1 else {}
            proxy_start = time.perf_counter()
            if through is not None and (ls, lt) not in d.helpers:  # helper maps are never candidates: no proxy
                scores["kl"] = through.score(aligner, src.encoded, ls, lt)
            set_snap(aligner, scores, through, src.encoded, ls, lt, opts.snaps)
            if d.xsrc is not None and (ls, lt) not in d.helpers:
                scores["kl_xsrc"] = d.xsrc.score(aligner, ls, lt)
            proxy_seconds = time.perf_counter() - proxy_start
            key = MapKey.of(src.name, tgt.name, ls, lt, method)
            meta = {**d.meta(x, xh, len(fit_idx)), "fit_seconds": seconds}
            d.store.save(key, aligner, meta, scores, helper=(ls, lt) in d.helpers)
            results.append(
                MapResult(key, scores, seconds, int(x.shape[0]), int(xh.shape[0]), {"proxy_seconds": proxy_seconds})
            )
            bar.update(1)
            shown = f"kl={scores['kl']:.3f}" if "kl" in scores else f"r2={scores.get('r2', float('nan')):.3f}"
            bar.set_postfix_str(f"{key.layers_label} {method} {shown}")
    bar.close()
    return results, data


def rank_starts(d: Direction, through: Through, data: Pairs, opts: SweepOptions) -> list[Start]:
    """The ``train_top`` best layer pairs per way of entering the target (into its input embeddings, layer 0; into a
    deeper layer), ranked by the proxy KL of their least-squares start, best first."""
    starts = []
    main = [pair for pair in d.pairs if pair not in d.helpers]
    for ls, lt in tqdm(main, desc=f"rank layers {d.src.name}->{d.tgt.name}", unit="pair", leave=False):
        x, y, _, _ = data[(ls, lt)]
        init = make_aligner("distill", opts.seed).fit(x, y)
        kl = through.score(init, d.src.encoded, ls, lt)
        rank = d.xsrc.score(init, ls, lt) if d.xsrc is not None and opts.rank_by == "kl_xsrc" else kl
        starts.append(Start(ls, lt, init, kl, rank))
    chosen: list[Start] = []
    for into_embeddings in (True, False):  # KLs compare across target layers: the same probes, the same teacher
        ranked = best_first(opts.rank_by, [(s.rank, s) for s in starts if (s.lt == 0) == into_embeddings])
        chosen.extend(s for _, s in ranked[: opts.train_top])
    return chosen


def train_best(d: Direction, through: Through, data: Pairs, opts: SweepOptions) -> list[MapResult]:
    """Train each trained kind through the target from the best least-squares starts (``rank_starts``), score and
    save it. A map into layer 0 is trained as served with the snap weight ``opts.train_snap`` (``AUTO``: the weight
    chosen for its start; a weight of 1 trains it unsnapped, since no gradient passes a full snap)."""
    src, tgt = d.src, d.tgt
    fit_idx, _ = d.split(opts.seed)
    starts = rank_starts(d, through, data, opts)
    results = []
    for method in [m for m in opts.methods if m in TRAINED]:
        for s in starts:
            ls, lt = s.ls, s.lt
            x, y, xh, yh = data[(ls, lt)]
            start = time.perf_counter()
            # The plain kind trains the very start it was ranked by (no second fit); other variants fit their own.
            aligner = s.init if method == "distill" else make_aligner(method, opts.seed).fit(x, y)
            assert isinstance(aligner, Distill)  # every trained method is a distill map
            label = f"{src.name}->{tgt.name} L{layers_name(ls)}->L{lt}"
            weight = 0.0
            if lt == 0:
                weight = train_weight(opts.train_snap, through, aligner, src.encoded, ls, opts.snaps, s.kl)
            report = through.train(aligner, src.encoded, ls, lt, label=label, snap=weight)
            seconds = time.perf_counter() - start
            scores = metrics.evaluate(aligner.transform(xh), yh, target_mean=y.mean(dim=0)) if len(xh) > 1 else {}
            # Trained through a snap, its own held-out KL (without one) is scored apart.
            scores["kl"] = through.score(aligner, src.encoded, ls, lt) if weight else report["heldout_kl"]
            scores["init_kl"] = s.kl
            set_snap(aligner, scores, through, src.encoded, ls, lt, opts.snaps)
            if d.xsrc is not None:
                scores["kl_xsrc"] = d.xsrc.score(aligner, ls, lt)
            key = MapKey.of(src.name, tgt.name, ls, lt, method)
            meta = {
                **d.meta(x, xh, len(fit_idx)),
                "fit_seconds": seconds,
                "train": {k: v for k, v in report.items() if k != "curve"},
                "probes": sorted({p.kind for p in through.probes}),
            }
            d.store.save(key, aligner, meta, scores)
            results.append(
                MapResult(key, scores, seconds, int(x.shape[0]), int(xh.shape[0]), {"curve": report["curve"]})
            )
    return results
