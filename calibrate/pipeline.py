"""``fit``: from two models and some text to a map store with a manifest and a report.

    from calibrate import FitConfig, fit
    result = fit(FitConfig(source="smollm2", target="gemma3", out="maps"))
    print(result.markdown())

Steps: read and split the passages; load both models; check every layer against them (before anything slow); add
the passages the models write themselves (``sampled``, ``vocab``); encode every passage with both models (cached);
per direction, build the target's probes and teacher when any map is ranked or trained through it, then fit, rank and
train the maps (``calibrate.sweep``); write the manifest (with the calibration record and a default map per
direction) and the report.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aligners.store import MapStore
from calibrate.config import FitConfig
from calibrate.layers import check_range
from calibrate.probes import make_probes
from calibrate.search import Budget
from calibrate.sources import Item, read_items, shares, split_items
from calibrate.sweep import TRAINED, Direction, Group, Judge, Side, layer_pairs, split_passages, sweep
from calibrate.trainer import Through, TrainConfig
from service.runtime.loading import LoadedModel, load_model


@dataclass
class FitResult:
    """What ``fit`` wrote: the store, one row per map (key, scores, sizes), timings, the calibration record and the
    learning curves of the trained maps."""

    store: Path
    rows: list[dict[str, Any]]
    timings_s: dict[str, float]
    calibration: dict[str, Any]
    curves: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    defaults: list[str] = field(default_factory=list)  # a line per default map that changed
    search: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # per trained map, the recipes tried

    def markdown(self) -> str:
        from calibrate.report import fit_markdown

        return fit_markdown(self.rows, self.timings_s, self.search)


def model_name(spec: str) -> str:
    """A short, path-safe name for a model spec: the alias, a folder's or file's name, or a hub id's last part."""
    name = Path(spec.rstrip("/")).name
    return name.removesuffix(".gguf").replace("__", "_") or spec


def load(spec: str, config: FitConfig) -> LoadedModel:
    print(f"loading {spec} ...", file=sys.stderr, flush=True)
    return load_model(spec, name=model_name(spec), dtype=config.dtype, device=config.device)


@dataclass
class Plan:
    """One direction's layer pairs: every pair fitted, and the helpers among them (only ``full`` needs those)."""

    source: str
    target: str
    pairs: list[tuple[Group, int]]
    helpers: set[tuple[Group, int]]


def plan(config: FitConfig, models: dict[str, LoadedModel]) -> tuple[list[Plan], dict[str, set[int]]]:
    """Each direction's layer pairs, checked against both models, and the layers each model must be encoded at."""
    groups, target_layers = config.source_groups(), config.target_layer_list()
    directions = [("a", "b")] + ([("b", "a")] if config.directions == "both" else [])
    plans, needed = [], {"a": set[int](), "b": set[int]()}
    for s, t in directions:
        src, tgt = models[s], models[t]
        check_range(sorted({x for g in groups for x in g}), src.n_layers, src.name, "--layers")
        if target_layers is not None:
            check_range(target_layers, tgt.n_layers, tgt.name, "--target-layers", allow_last=False)
        below = tgt.n_layers - 1  # injection layers stop below N
        main, pairs = (
            [(ls, min(lt, below)) for ls, lt in layer_pairs(groups, target_layers, src.n_layers, tgt.n_layers, full)]
            for full in (False, config.full)
        )
        plans.append(Plan(s, t, pairs, set(pairs) - set(main)))
        needed[s].update(x for ls, _ in pairs for x in ls)
        needed[t].update(lt for _, lt in pairs)
    return plans, needed


def fit(config: FitConfig) -> FitResult:
    """Fit, rank and train maps between ``config.source`` and ``config.target``; write them into ``config.out``."""
    from calibrate.extract import extract

    timings: dict[str, float] = {}
    items = (
        read_items(config.data, seed=config.seed, builtin_size=config.samples + config.eval_samples)
        if config.data
        else []
    )
    calib, held = split_items(items, config.samples, config.eval_samples, config.seed)
    if config.data and len(calib) < config.samples:
        print(
            f"note: {config.data} has {len(calib)} calibration passages (asked for {config.samples})", file=sys.stderr
        )
    models = {"a": load(config.source, config), "b": load(config.target, config)}
    plans, needed = plan(config, models)
    # After every check of the options: sampling takes a while.
    if config.sampled:
        calib = calib + from_models(list(models.values()), config.sampled, "sampled", config, timings)
    if config.vocab:
        calib = calib + from_models(list(models.values()), config.vocab, "vocabulary", config, timings)
    calib = within_positions(calib, list(models.values()), margin=config.probe_tokens + 16)

    texts = [it.context for it in calib]
    proxy = proxy_passages(config, models, calib)
    encoded, proxy_encoded = {}, {}
    for side, model in models.items():
        start = time.perf_counter()
        encoded[side] = extract(model, texts, sorted(needed[side]), config.cache)
        if proxy:
            proxy_encoded[side] = extract(model, [it.context for it in proxy], sorted(needed[side]), config.cache)
        timings[f"extract {model.name}"] = time.perf_counter() - start

    store = MapStore(config.out)
    metadata = {
        "data": config.data,
        "sampled": config.sampled,
        "vocab": config.vocab,
        "pairing": config.pairing,
        "proxy_data": config.proxy_data,
        "seed": config.seed,
        "n_passages": len(calib),
        "format": "interlingua.map",
    }
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[dict[str, float]]] = {}
    search: dict[str, list[dict[str, Any]]] = {}
    trains_through = config.proxy_probes > 0 or any(m in TRAINED for m in config.methods)
    for p in plans:
        src, tgt = models[p.source], models[p.target]
        budget = Budget(config.budget, f"{src.name}->{tgt.name}")
        with budget.phase("probes and teacher"):
            through = teacher(tgt, calib, config, timings) if trains_through else None
            xsrc = held_out_source(tgt, proxy, proxy_encoded[p.source], config, timings) if proxy else None
        direction = Direction(
            Side(src.name, src, encoded[p.source]),
            Side(tgt.name, tgt, encoded[p.target]),
            p.pairs,
            store,
            metadata,
            through,
            p.helpers,
            xsrc,
            budget,
        )
        for fitted in sweep(direction, config.sweep_options()):
            k = fitted.key
            rows.append(
                {
                    **k.as_dict(),
                    **fitted.metrics,
                    "fit_seconds": fitted.fit_seconds,
                    "n_pairs_fit": fitted.n_fit,
                    "n_pairs_heldout": fitted.n_heldout,
                    "pairing": direction.pairings.get((k.source_layers, k.target_layer), ""),
                }
            )
            if "curve" in fitted.extra:
                curves[f"{k.source}->{k.target} {k.layers_label} {k.method}"] = fitted.extra["curve"]
            timings[f"fit {k.method}"] = timings.get(f"fit {k.method}", 0.0) + fitted.fit_seconds
            if "proxy_seconds" in fitted.extra:
                timings["proxy KL scoring"] = timings.get("proxy KL scoring", 0.0) + fitted.extra["proxy_seconds"]
            if "recipe" in fitted.extra:
                rows[-1]["recipe"] = fitted.extra["recipe"]
                rows[-1]["no_pilots"] = fitted.extra["no_pilots"]
                search[f"{k.source}->{k.target} {k.layers_label} {k.method}"] = fitted.extra["pilots"]
        split = budget.close()
        print(split, file=sys.stderr)
        for phase, seconds in budget.spent.items():
            timings[f"{phase} {src.name}->{tgt.name}"] = seconds

    manifest = store.manifest()
    manifest["calibration"] = {
        "data": config.data,
        "sampled": config.sampled,
        "vocab": config.vocab,
        "seed": config.seed,
        "samples": config.samples,
        "eval_samples": config.eval_samples,
        "n_passages": len(calib),
        "n_heldout_items": len(held),
        "proxy_data": config.proxy_data,
        "n_proxy_passages": len(proxy),
        "rank_by": config.ranking,
        "budget_minutes": config.budget,
        "models": {
            m.name: {"spec": m.spec, "fingerprint": m.fingerprint, "n_layers": m.n_layers} for m in models.values()
        },
    }
    store.write_manifest(manifest)
    changes = store.choose_defaults(by="proxy" if trains_through else "r2")
    result = FitResult(store.root, rows, timings, manifest["calibration"], curves, changes, search)
    write_report(result)
    return result


def write_report(result: FitResult) -> None:
    """``fit-report.json`` and ``fit-report.md`` (and ``learning-curves.png`` for trained maps) in the store."""
    from calibrate.report import learning_curves

    report = {
        "rows": result.rows,
        "timings_s": result.timings_s,
        "calibration": result.calibration,
        "search": result.search,
    }
    (result.store / "fit-report.json").write_text(json.dumps({**report, "curves": result.curves}, indent=1))
    if result.curves:
        learning_curves(result.curves, result.store / "learning-curves.png")
    (result.store / "fit-report.md").write_text(result.markdown())


def from_models(
    models: list[LoadedModel], n: int, kind: str, config: FitConfig, timings: dict[str, float]
) -> list[Item]:
    """``n`` passages the models make themselves, split between them: ``sampled`` (written by each model,
    ``calibrate.sources.sampled``) or ``vocabulary`` (words of each model's vocabulary, ``calibrate.sources.vocab``)."""
    from calibrate.sources.sampled import sample_passages
    from calibrate.sources.vocab import vocabulary_passages

    start = time.perf_counter()
    out: list[Item] = []
    for model, share in zip(models, shares(n, len(models)), strict=True):
        if kind == "sampled":
            kept = sample_passages(model, share, config.seed, config.cache)
        else:
            kept = vocabulary_passages(model, share, config.seed)
        print(f"{model.name}: {len(kept)} of {share} {kind} passages kept", file=sys.stderr)
        out.extend(kept)
    timings[f"{kind} passages"] = time.perf_counter() - start
    return out


def within_positions(items: list[Item], models: list[LoadedModel], margin: int) -> list[Item]:
    """The passages every model can read with ``margin`` positions to spare (probes read after them); says how many
    were skipped."""
    kept = [
        it
        for it in items
        if all(
            m.max_positions is None or 1 + len(m.tokenize(it.context)[0]) + margin <= m.max_positions for m in models
        )
    ]
    if len(kept) < len(items):
        limits = ", ".join(f"{m.name} {m.max_positions}" for m in models)
        print(
            f"note: skipped {len(items) - len(kept)} passages longer than the models' positions ({limits})",
            file=sys.stderr,
        )
    if not kept:
        raise ValueError("no calibration passage fits the models' positions")
    return kept


def teacher(target: LoadedModel, calib: list[Item], config: FitConfig, timings: dict[str, float]) -> Through:
    """Probes on the calibration passages and the target's own behaviour on them (see ``calibrate.trainer``)."""
    start = time.perf_counter()
    probes = probes_on(target, calib, config)
    timings[f"probes {target.name}"] = time.perf_counter() - start
    _, held = split_passages(len(calib), config.seed)
    start = time.perf_counter()
    through = Through.build(target, [it.context for it in calib], probes, set(held), train_config(config), config.cache)
    timings[f"teacher {target.name}"] = time.perf_counter() - start
    print(
        f"{target.name}: {len(probes)} probes ({', '.join(config.probes)}), {len(through.train_idx)} for training, "
        f"{len(through.held_idx)} held out",
        file=sys.stderr,
    )
    return through


def proxy_passages(config: FitConfig, models: dict[str, LoadedModel], calib: list[Item]) -> list[Item]:
    """``config.proxy_samples`` passages of ``config.proxy_data`` (none without it) that both models can read, none
    of them a calibration passage: the held-out source the proxy ``kl_xsrc`` scores maps on."""
    if config.proxy_data is None:
        return []
    seen = {it.context for it in calib}
    items = [it for it in read_items(config.proxy_data, seed=config.seed + 1) if it.context not in seen]
    unique = list({it.context: it for it in items}.values())[: config.proxy_samples]
    kept = within_positions(unique, list(models.values()), margin=config.probe_tokens + 16)
    print(f"proxy on another source: {len(kept)} passages of {config.proxy_data}", file=sys.stderr)
    return kept


def held_out_source(
    target: LoadedModel, passages: list[Item], encoded: list[Any], config: FitConfig, timings: dict[str, float]
) -> Judge:
    """The target's probes on the held-out source's passages (every one held out) with the source's states of them."""
    start = time.perf_counter()
    probes = probes_on(target, passages, config)
    texts = [it.context for it in passages]
    through = Through.held_out(target, texts, probes, train_config(config), config.cache)
    timings[f"held-out source probes {target.name}"] = time.perf_counter() - start
    return Judge(through, encoded)


def probes_on(target: LoadedModel, passages: list[Item], config: FitConfig) -> list[Any]:
    """The target's probes of ``config.probes`` on ``passages`` (``calibrate.probes.make_probes``)."""
    return make_probes(
        target,
        passages,
        list(config.probes),
        config.probe_tokens,
        per_passage=config.probes_per_passage,
        seed=config.seed,
        cache=config.cache,
    )


def train_config(config: FitConfig) -> TrainConfig:
    return TrainConfig(
        lr=config.lr,
        batch_size=config.train_batch,
        max_epochs=config.train_epochs,
        max_minutes=config.train_minutes or 12.0,  # each training sets its own (``calibrate.sweep.train_best``)
        anchor=config.anchor or 0.0,
        ema=config.ema,
        backoff=config.backoff,
        row_steps=config.row_steps,
        heldout_probes=max(1, config.proxy_probes),
        seed=config.seed,
    )
