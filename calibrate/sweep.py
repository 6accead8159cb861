"""The fitting sweep: paired states from both models -> one map per (direction, source layer, target layer, method).

For each direction the calibration passages are split by passage into a fitting part and a held-out part (10%);
maps are fitted on the fitting part's token pairs and scored on the held-out pairs (cosine beside the mean baseline,
centred cosine, R², retrieval@1).
"""

from __future__ import annotations

import copy
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from tqdm import tqdm

from aligners import Aligner, Distill, build, metrics
from aligners.registry import takes_seed
from aligners.store import MapKey, MapStore, best_first, layers_name, matching_layer
from calibrate.layers import AUTO
from calibrate.search import (
    PILOT_MIN_EVALS,
    PILOT_SHARE,
    Budget,
    Recipe,
    anchor_recipes,
    n_pilots,
    pilots_fit,
    step_size_recipes,
    unpiloted_recipe,
)
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
# characters (``piece_pairs``) where the map goes into the target's input embeddings, which read no context; "auto"
# fits a map into the embeddings both ways and keeps the one the ranking proxy scores lower (deeper maps: "end").
PAIRINGS = ("auto", "end", "span")


def gather(
    src: Side, tgt: Side, items: list[int], ls: int | Group, lt: int, pairing: str = "end"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paired rows (source at ls, one layer or several concatenated; target at lt) over the given passages,
    float32."""
    if pairing not in PAIRINGS[1:]:
        raise ValueError(f"pairing must be one of {', '.join(PAIRINGS[1:])}, got {pairing!r}")
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


def train_weight(
    train_snap: float | str,
    judge: Judge,
    init: Aligner,
    ls: int | Group,
    snaps: tuple[float, ...],
    init_kl: float,
) -> float:
    """The snap weight a map into layer 0 is trained through: ``train_snap``, or with ``AUTO`` the weight among
    ``snaps`` the ranking proxy scores lowest for its least-squares start ``init`` (whose own score is ``init_kl``);
    below 1."""
    weight = judge.choose_snap(init, ls, snaps, init_kl)[0] if train_snap == AUTO else train_snap
    assert isinstance(weight, float)
    return weight if weight < 1 else 0.0


@dataclass(frozen=True)
class SweepOptions:
    """How one direction's maps are fitted, ranked and trained (``FitConfig.sweep_options``). ``rank_by``: the proxy
    that ranks every candidate, chooses pairings, snap weights and training recipes, ``kl`` (held-out probes of the
    calibration text) or ``kl_xsrc`` (probes on passages of another source, a ``Judge``). ``lr`` and ``anchor``
    fix the training recipe; None searches it (``calibrate.search``). ``train_minutes``: each final training's time;
    None: an equal share of the direction's budget."""

    methods: tuple[str, ...]
    seed: int = 0
    train_top: int = 1
    pairing: str = "end"
    snaps: tuple[float, ...] = (0.0,)
    train_snap: float | str = 0.0
    rank_by: str = "kl"
    lr: float | None = None
    lr_rel: float | None = None
    anchor: float | None = 0.0
    train_minutes: float | None = None
    both_proxies: bool = False  # score every map by every proxy, not only by the ranking one


@dataclass
class Judge:
    """One proxy: probes the target reads after a map's handover (``Through``) with the source's states of their
    passages; scores a map as served (lower is better)."""

    through: Through
    encoded: list[Encoded]

    def score(self, aligner: Aligner, ls: int | Group, lt: int, snap: float = 0.0) -> float:
        return self.through.score(aligner, self.encoded, ls, lt, snap)

    def choose_snap(
        self, aligner: Aligner, ls: int | Group, snaps: tuple[float, ...], kl0: float, lt: int = 0
    ) -> tuple[float, dict[float, float]]:
        return self.through.choose_snap(aligner, self.encoded, ls, list(snaps), kl0, lt)

    def held_kl(self, map_fn: Any, ls: int | Group, lt: int) -> float:
        """The score of a map function (a map being trained, as served)."""
        return self.through.held_kl(map_fn, self.encoded, ls, lt)


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
    xsrc: Judge | None = None  # the proxy on another source (all its probes held out): ``kl_xsrc``
    budget: Budget | None = None
    pairings: dict[tuple[Group, int], str] = field(default_factory=dict)  # how each pair's tokens were paired

    def split(self, seed: int) -> tuple[list[int], list[int]]:
        return split_passages(len(self.src.encoded), seed)

    def judges(self) -> dict[str, Judge]:
        """The proxies this direction measures: ``kl`` (calibration text) and ``kl_xsrc`` (another source)."""
        out = {}
        if self.through is not None:
            out["kl"] = Judge(self.through, self.src.encoded)
        if self.xsrc is not None:
            out["kl_xsrc"] = self.xsrc
        return out

    def ranking(self, rank_by: str) -> str:
        """The proxy that ranks: ``rank_by``, or, where this direction does not measure it, the in-source ``kl``."""
        return rank_by if rank_by in self.judges() else "kl"

    def ranker(self, rank_by: str, through: Through) -> Judge:
        """The judge of ``ranking``: ``rank_by``'s, or the in-source one of ``through``."""
        return self.judges().get(rank_by) or Judge(through, self.src.encoded)

    def phase(self, name: str) -> Any:
        """Time ``name`` against the direction's budget (a no-op without one)."""
        from contextlib import nullcontext

        return self.budget.phase(name) if self.budget is not None else nullcontext()

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


def score_proxies(
    d: Direction,
    aligner: Aligner,
    ls: Group,
    lt: int,
    opts: SweepOptions,
    scores: dict[str, float],
    unsnapped: dict[str, float] | None = None,
    every: bool = False,
) -> None:
    """The proxies of a candidate map as it will be served, into ``scores``: for a map into layer 0 (or a deeper one
    with a readout into it, ``carry_readout``) first the snap weight among ``opts.snaps`` the ranking proxy scores
    lowest (stored in the map, ``fit_info["snap"]``; the first weight where nothing scores), then the proxies at that
    weight: the ranking one, and with ``every`` (or ``opts.both_proxies``) the other too. ``proxy`` is the ranking
    proxy's score (what ranks maps and picks defaults), ``proxy_no_snap`` its score without a snap. ``unsnapped``:
    proxies already measured without a snap (not measured again)."""
    judges = {} if (ls, lt) in d.helpers else d.judges()  # helper maps are never candidates: no proxy
    if not (every or opts.both_proxies):
        judges = {name: j for name, j in judges.items() if name == opts.rank_by}
    known = unsnapped or {}
    weight = 0.0
    if lt == 0 or aligner.readout is not None:
        weight = opts.snaps[0]
        if opts.rank_by in judges:
            judge = judges[opts.rank_by]
            k0 = known[opts.rank_by] if opts.rank_by in known else judge.score(aligner, ls, lt)
            weight, kls = judge.choose_snap(aligner, ls, opts.snaps, k0, lt)
            scores["proxy_no_snap"], scores[opts.rank_by] = k0, kls[weight]
        aligner.fit_info["snap"] = weight
        scores["snap"] = weight
    elif opts.rank_by in judges:
        scores["proxy_no_snap"] = (
            known[opts.rank_by] if opts.rank_by in known else judges[opts.rank_by].score(aligner, ls, lt)
        )
        scores[opts.rank_by] = scores["proxy_no_snap"]
    for name, judge in judges.items():
        if name not in scores:
            scores[name] = known[name] if name in known and not weight else judge.score(aligner, ls, lt, weight)
    if opts.rank_by in scores:
        scores["proxy"] = scores[opts.rank_by]


Pairs = dict[tuple[Group, int], tuple[torch.Tensor, ...]]  # (x, y, x held out, y held out) per layer pair


@dataclass
class Start:
    """A least-squares start for training: its layer pair, the map and the score of ``SweepOptions.rank_by`` that
    ranks it, without a snap (``rank``)."""

    ls: Group
    lt: int
    init: Aligner
    rank: float


def sweep(d: Direction, opts: SweepOptions) -> list[MapResult]:
    """Fit and save every method for every layer pair of one direction (``fit_closed_form``), then train the trained
    kinds from the best least-squares starts (``train_best``).

    With ``d.through`` (probes and the target's own behaviour on them), every map is also scored by the held-out KL
    of the target reading the probes after the handover (``kl``, lower is better), and with ``d.xsrc`` by the same on
    another source (``kl_xsrc``). ``d.helpers`` are the per-layer pairs only the ``full`` mode needs: fitted, never
    trained. Every map into layer 0 gets the snap weight among ``opts.snaps`` the ranking proxy scores lowest.
    """
    trained = [m for m in opts.methods if m in TRAINED]
    if trained and d.through is None:
        raise ValueError(f"method(s) {trained} train through the target and need probes (a teacher)")
    with d.phase("least squares and screening"):
        results, data = fit_closed_form(d, opts)
    if trained and d.through is not None:
        results += train_best(d, d.through, data, opts, results)
    return results


def save(
    d: Direction,
    key: MapKey,
    aligner: Aligner,
    meta: dict[str, Any],
    scores: dict[str, float],
    fitted: tuple[torch.Tensor, torch.Tensor, float],
    extra: dict[str, Any],
    helper: bool = False,
) -> MapResult:
    """Write one map into the direction's store; its result row (``fitted``: fitting rows, held-out rows, seconds)."""
    d.store.save(key, aligner, meta, scores, helper=helper)
    x, xh, seconds = fitted
    return MapResult(key, scores, seconds, int(x.shape[0]), int(xh.shape[0]), extra)


def choose_pairing(d: Direction, ls: Group, fit_idx: list[int], opts: SweepOptions) -> tuple[str, dict[str, float]]:
    """For a map into layer 0 with ``opts.pairing == "auto"``: the pairing whose least-squares map the ranking proxy
    scores lower (without a snap), with each pairing's score; else ``opts.pairing`` (``end`` for deeper maps)."""
    if opts.pairing != "auto":
        return opts.pairing, {}
    judge = d.judges().get(opts.rank_by)
    if judge is None:
        return "end", {}
    scored = {}
    for pairing in PAIRINGS[1:]:
        x, y = gather(d.src, d.tgt, fit_idx, ls, 0, pairing)
        scored[pairing] = judge.score(make_aligner("linear", opts.seed).fit(x, y), ls, 0)
    return best_first("kl", [(kl, p) for p, kl in scored.items()])[0][1], scored


def fit_closed_form(d: Direction, opts: SweepOptions) -> tuple[list[MapResult], Pairs]:
    """Every method that is not trained, for every layer pair, scored and saved; returns the paired rows too."""
    src, tgt = d.src, d.tgt
    fit_idx, held_idx = d.split(opts.seed)
    closed = [m for m in opts.methods if m not in TRAINED]
    results = []
    data: Pairs = {}
    bar = tqdm(total=len(d.pairs) * len(closed), desc=f"fit {src.name}->{tgt.name}", unit="map")
    for ls, lt in d.pairs:
        pairing, by_pairing = ("end", {}) if lt or (ls, lt) in d.helpers else choose_pairing(d, ls, fit_idx, opts)
        x, y = gather(src, tgt, fit_idx, ls, lt, pairing)
        xh, yh = gather(src, tgt, held_idx, ls, lt, pairing)
        data[(ls, lt)] = (x, y, xh, yh)
        d.pairings[(ls, lt)] = pairing
        for method in closed:
            start = time.perf_counter()
            aligner = make_aligner(method, opts.seed).fit(x, y)
            seconds = time.perf_counter() - start
            scores = metrics.evaluate(aligner.transform(xh), yh, target_mean=y.mean(dim=0)) if len(xh) > 1 else {}
            scores.update({f"proxy_{p}_pairing": kl for p, kl in by_pairing.items()})
            proxy_start = time.perf_counter()
            # The pairing was chosen by this very map (linear least squares): its score without a snap is known.
            known = {opts.rank_by: by_pairing[pairing]} if method == "linear" and by_pairing else {}
            score_proxies(d, aligner, ls, lt, opts, scores, known)
            proxy_seconds = time.perf_counter() - proxy_start
            key = MapKey.of(src.name, tgt.name, ls, lt, method)
            meta = {**d.meta(x, xh, len(fit_idx)), "fit_seconds": seconds, "pairing": pairing}
            extra = {"proxy_seconds": proxy_seconds}
            results.append(save(d, key, aligner, meta, scores, (x, xh, seconds), extra, (ls, lt) in d.helpers))
            bar.update(1)
            shown = f"proxy={scores['proxy']:.3f}" if "proxy" in scores else f"r2={scores.get('r2', float('nan')):.3f}"
            bar.set_postfix_str(f"{key.layers_label} {method} {shown}")
    bar.close()
    return results, data


def rank_starts(
    d: Direction, through: Through, data: Pairs, opts: SweepOptions, scored: dict[tuple[Group, int], float]
) -> list[Start]:
    """The ``train_top`` best layer pairs per way of entering the target (into its input embeddings, layer 0; into a
    deeper layer), ranked by the ranking proxy of their least-squares start (without a snap), best first. ``scored``:
    that score where the sweep measured it already (the ``linear`` map is the very start a ``distill`` map trains)."""
    starts = []
    judge = d.ranker(opts.rank_by, through)
    main = [pair for pair in d.pairs if pair not in d.helpers]
    for ls, lt in tqdm(main, desc=f"rank layers {d.src.name}->{d.tgt.name}", unit="pair", leave=False):
        x, y, _, _ = data[(ls, lt)]
        init = make_aligner("distill", opts.seed).fit(x, y)
        rank = scored[(ls, lt)] if (ls, lt) in scored else judge.score(init, ls, lt)
        starts.append(Start(ls, lt, init, rank))
    chosen: list[Start] = []
    for into_embeddings in (True, False):  # KLs compare across target layers: the same probes, the same teacher
        ranked = best_first("kl", [(s.rank, s) for s in starts if (s.lt == 0) == into_embeddings])
        chosen.extend(s for _, s in ranked[: opts.train_top])
    return chosen


def start_map(data: Pairs, method: str, s: Start, seed: int) -> Distill:
    """A fresh map of ``method`` to train from the start ``s``: the plain kind a copy of the very start it was ranked
    by (no second fit); other variants fit their own on the same pairs."""
    x, y, _, _ = data[(s.ls, s.lt)]
    aligner = copy.deepcopy(s.init) if method == "distill" else make_aligner(method, seed).fit(x, y)
    assert isinstance(aligner, Distill)  # every trained method is a distill map
    return aligner


def train_one(
    d: Direction,
    through: Through,
    data: Pairs,
    method: str,
    s: Start,
    opts: SweepOptions,
    recipe: Recipe,
    seconds: float,
) -> tuple[Distill, dict[str, Any], float]:
    """A fresh map of ``method`` from the start ``s``, trained with ``recipe`` for at most ``seconds``; returns it,
    the training report and the snap weight it was trained through."""
    aligner = start_map(data, method, s, opts.seed)
    judge = d.ranker(opts.rank_by, through)  # its probes pick the state kept and when training stops
    weight = 0.0
    if s.lt == 0:
        weight = train_weight(opts.train_snap, judge, aligner, s.ls, opts.snaps, s.rank)
    config = replace(
        through.config, lr=recipe.lr, lr_rel=recipe.lr_rel, anchor=recipe.anchor, max_minutes=max(seconds, 10) / 60
    )
    label = f"{d.src.name}->{d.tgt.name} L{layers_name(s.ls)}->L{s.lt} {recipe.label}"
    report = replace(through, config=config).train(
        aligner, d.src.encoded, s.ls, s.lt, label=label, snap=weight, held_out=lambda fn: judge.held_kl(fn, s.ls, s.lt)
    )
    return aligner, report, weight


def choose_recipe(
    d: Direction, through: Through, data: Pairs, method: str, s: Start, opts: SweepOptions, seconds: float
) -> tuple[Recipe, list[dict[str, Any]]]:
    """The training recipe the ranking proxy scores best after a pilot of ``seconds`` each: step sizes first, then
    anchors at the best step size (``calibrate.search``); returns it with every pilot's recipe and score."""
    judge = d.ranker(opts.rank_by, through)
    tried: list[dict[str, Any]] = []

    def best_of(recipes: list[Recipe]) -> None:
        for recipe in recipes:
            aligner, report, weight = train_one(d, through, data, method, s, opts, recipe, seconds)
            proxy = judge.score(aligner, s.ls, s.lt, weight)
            tried.append({**asdict(recipe), "steps": report["steps"], "proxy": proxy})

    best_of(step_size_recipes(opts.lr, opts.anchor, opts.lr_rel))
    best = best_first("kl", [(t["proxy"], t) for t in tried])[0][1]
    best_of(anchor_recipes(Recipe(best["lr_rel"], best["anchor"], best["lr"]), opts.anchor))
    best = best_first("kl", [(t["proxy"], t) for t in tried])[0][1]
    return Recipe(best["lr_rel"], best["anchor"], best["lr"]), tried


def carry_readout(aligner: Aligner, into_embeddings: Aligner | None) -> None:
    """Give a map into a deeper layer the map into layer 0 from the same source layers as its readout
    (``Aligner.readout``), so that the snap toward the target's vocabulary that map is served with can be carried up
    the residual stream; nothing when there is none, or it is not affine (a residual MLP)."""
    if into_embeddings is None or (isinstance(into_embeddings, Distill) and into_embeddings.hidden):
        return
    weight, bias = into_embeddings.affine_on(torch.device("cpu"), torch.float32)
    aligner.set_readout(weight, bias)


def train_best(
    d: Direction, through: Through, data: Pairs, opts: SweepOptions, fitted: list[MapResult] | None = None
) -> list[MapResult]:
    """Train each trained kind through the target from the best least-squares starts (``rank_starts``), with the
    recipe its pilots chose (``choose_recipe``; none where ``opts`` fixes it), score and save it. A map into layer 0
    is trained as served with the snap weight ``opts.train_snap`` (``AUTO``: the weight chosen for its start; a weight
    of 1 trains it unsnapped, since no gradient passes a full snap). A map into a deeper layer carries the trained
    map into layer 0 from its source layers as its readout (``carry_readout``; maps into layer 0 train first), and
    gets the snap weight the ranking proxy scores lowest with it."""
    src, tgt = d.src, d.tgt
    fit_idx, _ = d.split(opts.seed)
    with d.phase("least squares and screening"):
        scored = {
            (r.key.source_layers, r.key.target_layer): r.metrics["proxy_no_snap"]
            for r in fitted or []
            if r.key.method == "linear" and "proxy_no_snap" in r.metrics
        }
        starts = rank_starts(d, through, data, opts, scored)
    jobs = [(method, s) for method in opts.methods if method in TRAINED for s in starts]
    pilots = n_pilots(opts.lr, opts.anchor, opts.lr_rel)
    per_map = 60 * (opts.train_minutes if opts.train_minutes is not None else 12.0)  # without a budget
    left = d.budget.left_s() if d.budget is not None else per_map * len(jobs)
    pilot_s = PILOT_SHARE * left / (len(jobs) * pilots) if pilots and jobs else 0.0
    unpiloted = unpiloted_recipe(opts.lr, opts.anchor, opts.lr_rel)
    no_pilots = ""
    if pilot_s:  # time one training step: pilots too short to move a map off its start are not run
        with d.phase("pilots"):
            method, s = jobs[0]
            step_s = through.step_seconds(start_map(data, method, s, opts.seed), src.encoded, s.ls, s.lt)
        every = through.config.eval_every
        if not pilots_fit(pilot_s, step_s, every):
            no_pilots = (
                f"{src.name}->{tgt.name}: no pilots: each would train {pilot_s / step_s:.0f} steps ({step_s:.1f} s a "
                f"step), fewer than {PILOT_MIN_EVALS} held-out evaluations (one every {every} steps); every map "
                f"trained with {unpiloted.label} (a larger --budget runs them)"
            )
            print(no_pilots, file=sys.stderr)
            pilots, pilot_s = 0, 0.0
    results = []
    into_embeddings: dict[tuple[str, Group], Aligner] = {}  # the trained maps into layer 0, by method and source layers
    for i, (method, s) in enumerate(jobs):
        ls, lt = s.ls, s.lt
        x, y, xh, yh = data[(ls, lt)]
        recipe = unpiloted
        tried: list[dict[str, Any]] = []
        if pilots:
            with d.phase("pilots"):
                recipe, tried = choose_recipe(d, through, data, method, s, opts, pilot_s)
        seconds = per_map
        if opts.train_minutes is None and d.budget is not None:  # an equal share of what the later pilots leave
            later = len(jobs) - i
            seconds = (d.budget.left_s() - pilot_s * pilots * (later - 1)) / later
        start = time.perf_counter()
        with d.phase("training"):
            aligner, report, weight = train_one(d, through, data, method, s, opts, recipe, seconds)
        seconds = time.perf_counter() - start
        if lt == 0:
            into_embeddings[(method, ls)] = aligner
        else:
            carry_readout(aligner, into_embeddings.get((method, ls)))
        with d.phase("least squares and screening"):
            scores = metrics.evaluate(aligner.transform(xh), yh, target_mean=y.mean(dim=0)) if len(xh) > 1 else {}
            scores["init_proxy"] = s.rank
            # Trained unsnapped, its own held-out KL without a snap is known.
            known = {} if weight else {d.ranking(opts.rank_by): report["heldout_kl"]}  # the judge trained by, unsnapped
            score_proxies(d, aligner, ls, lt, opts, scores, known, every=True)
        key = MapKey.of(src.name, tgt.name, ls, lt, method)
        meta = {
            **d.meta(x, xh, len(fit_idx)),
            "fit_seconds": seconds,
            "pairing": d.pairings[(ls, lt)],
            "train": {k: v for k, v in report.items() if k != "curve"} | {"recipe": asdict(recipe)},
            "pilots": tried,
            "probes": sorted({p.kind for p in through.probes}),
        }
        extra = {"curve": report["curve"], "recipe": recipe.label, "pilots": tried, "no_pilots": no_pilots}
        results.append(save(d, key, aligner, meta, scores, (x, xh, seconds), extra))
    return results
