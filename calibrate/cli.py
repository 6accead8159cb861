"""``interlingua-calibrate`` (also ``python -m calibrate``): fit maps between two models, evaluate them, list them.

interlingua-calibrate fit --source smollm2 --target gemma3 --out maps
interlingua-calibrate eval --maps maps --modes replace,full,last_token,embeds
interlingua-calibrate list maps
interlingua-calibrate export --maps maps --out service/default_maps
interlingua-calibrate show maps/smollm2__gemma3/L8-L4/affine.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from aligners import MapFileError, read_header
from aligners import load as load_map
from aligners.resolve import choose
from aligners.store import MapKey, MapNotFoundError, MapStore, same_map
from calibrate.data import DataError, Item, read_items, shares, split_items
from calibrate.distill import Through, TrainConfig
from calibrate.fictional import BUILTINS
from calibrate.fit import METHODS, PAIRINGS, TRAINED, Group, Side, layer_pairs, split_passages, sweep
from calibrate.layers import (
    AUTO,
    SNAP_DEFAULT,
    check_range,
    parse_layer_groups,
    parse_layers,
    parse_snaps,
    parse_train_snap,
)
from calibrate.probes import PROBE_KINDS, make_probes
from service.runtime.loading import LoadedModel, ModelSpecError, cache_home, load_model
from service.runtime.modes import HANDOVER_MODES, get_mode, parse_handover_modes

# What the measurements favour (docs/results/translation-quality.md): trained maps beat least squares in every mode;
# affine least squares is level with linear everywhere measured, so only linear (the trained map's start) is fitted.
DEFAULT_METHODS = ("linear", "distill")
DEFAULT_PROBES = ("continuation", "repeat", "qa")
DEFAULT_DATA = "builtin:fictional-qa,builtin:python-docs"  # QA passages and real prose: varied text


def _lr(text: str) -> float | None:
    if text == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected auto or a number > 0, got {text!r}")
    return value


def model_name(spec: str) -> str:
    """A short, path-safe name for a model spec: the alias, a folder's or file's name, or a hub id's last part."""
    name = Path(spec.rstrip("/")).name
    return name.removesuffix(".gguf").replace("__", "_") or spec


def _load(spec: str, args: argparse.Namespace) -> LoadedModel:
    print(f"loading {spec} ...", file=sys.stderr, flush=True)
    return load_model(spec, name=model_name(spec), dtype=args.dtype, device=args.device)


def cmd_fit(args: argparse.Namespace) -> int:
    from calibrate.extract import extract

    timings: dict[str, float] = {}
    items = read_items(args.data, seed=args.seed, builtin_size=args.samples + args.eval_samples)
    calib, held = split_items(items, args.samples, args.eval_samples, args.seed)
    if len(calib) < args.samples:
        print(f"note: {args.data} has {len(calib)} calibration passages (asked for {args.samples})", file=sys.stderr)
    source_layers = parse_layer_groups(args.layers)
    target_layers = parse_layers(args.target_layers) if args.target_layers else None
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")

    snaps = parse_snaps(args.snap, "--snap")
    models = {"a": _load(args.source, args), "b": _load(args.target, args)}
    directions = [("a", "b")] + ([("b", "a")] if args.directions == "both" else [])
    plans: list[tuple[str, str, list[tuple[Group, int]], set[tuple[Group, int]]]] = []
    needed: dict[str, set[int]] = {"a": set(), "b": set()}
    for s, t in directions:
        src, tgt = models[s], models[t]
        check_range(sorted({x for g in source_layers for x in g}), src.n_layers, src.name, "--layers")
        if target_layers is not None:
            check_range(target_layers, tgt.n_layers, tgt.name, "--target-layers", allow_last=False)
        main = layer_pairs(source_layers, target_layers, src.n_layers, tgt.n_layers, False)
        pairs = layer_pairs(source_layers, target_layers, src.n_layers, tgt.n_layers, args.full)
        below = tgt.n_layers - 1  # injection layers stop below N
        main = [(ls, min(lt, below)) for ls, lt in main]
        pairs = [(ls, min(lt, below)) for ls, lt in pairs]
        plans.append((s, t, pairs, set(pairs) - set(main)))
        needed[s].update(x for ls, _ in pairs for x in ls)
        needed[t].update(lt for _, lt in pairs)
    if args.sampled:  # after every check of the arguments: sampling takes a while
        calib = calib + _from_models(list(models.values()), args.sampled, "sampled", args, timings)
    if args.vocab:
        calib = calib + _from_models(list(models.values()), args.vocab, "vocabulary", args, timings)
    calib = _within_positions(calib, list(models.values()), margin=args.probe_tokens + 16)

    texts = [it.context for it in calib]
    encoded = {}
    for side, model in models.items():
        start = time.perf_counter()
        encoded[side] = extract(model, texts, sorted(needed[side]), Path(args.cache))
        timings[f"extract {model.name}"] = time.perf_counter() - start

    store = MapStore(args.out)
    metadata = {
        "data": args.data,
        "sampled": args.sampled,
        "vocab": args.vocab,
        "pairing": args.pairing,
        "seed": args.seed,
        "n_passages": len(calib),
        "format": "interlingua.map",
    }
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[dict[str, float]]] = {}
    trains_through = args.proxy_probes > 0 or any(m in TRAINED for m in methods)
    for s, t, pairs, helpers in plans:
        sides = Side(models[s].name, models[s], encoded[s]), Side(models[t].name, models[t], encoded[t])
        through = _through(models[t], calib, args, timings) if trains_through else None
        for result in sweep(
            *sides,
            pairs,
            methods,
            store,
            metadata,
            args.seed,
            through,
            helpers,
            args.train_top,
            args.pairing,
            snaps,
            parse_train_snap(args.train_snap),
        ):
            rows.append(
                {
                    **result.key.as_dict(),
                    **result.metrics,
                    "fit_seconds": result.fit_seconds,
                    "n_pairs_fit": result.n_fit,
                    "n_pairs_heldout": result.n_heldout,
                }
            )
            if "curve" in result.extra:
                k = result.key
                curves[f"{k.source}->{k.target} {k.layers_label} {k.method}"] = result.extra["curve"]
            timings[f"fit {result.key.method}"] = timings.get(f"fit {result.key.method}", 0.0) + result.fit_seconds
            if "proxy_seconds" in result.extra:
                timings["proxy KL scoring"] = timings.get("proxy KL scoring", 0.0) + result.extra["proxy_seconds"]

    manifest = store.manifest()
    manifest["calibration"] = {
        "data": args.data,
        "sampled": args.sampled,
        "vocab": args.vocab,
        "seed": args.seed,
        "samples": args.samples,
        "eval_samples": args.eval_samples,
        "n_passages": len(calib),
        "n_heldout_items": len(held),
        "models": {
            m.name: {"spec": m.spec, "fingerprint": m.fingerprint, "n_layers": m.n_layers} for m in models.values()
        },
    }
    store.write_manifest(manifest)
    for change in store.choose_defaults(by="kl" if trains_through else "r2"):
        print(change, file=sys.stderr)
    report = {"rows": rows, "timings_s": timings, "calibration": manifest["calibration"], "curves": curves}
    (store.root / "fit-report.json").write_text(json.dumps(report, indent=1))
    from calibrate.report import fit_markdown, learning_curves

    if curves:
        learning_curves(curves, store.root / "learning-curves.png")
    (store.root / "fit-report.md").write_text(fit_markdown(rows, timings))
    print(fit_markdown(rows, timings))
    print(f"wrote {len(rows)} maps and {store.manifest_path}")
    return 0


def _from_models(
    models: list[LoadedModel], n: int, kind: str, args: argparse.Namespace, timings: dict[str, float]
) -> list[Item]:
    """``n`` passages the models make themselves, split between them: ``sampled`` (written by each model,
    ``calibrate.sampled``) or ``vocabulary`` (words of each model's vocabulary, ``calibrate.vocab``)."""
    from calibrate.sampled import sample_passages
    from calibrate.vocab import vocabulary_passages

    start = time.perf_counter()
    out: list[Item] = []
    for model, share in zip(models, shares(n, len(models)), strict=True):
        if kind == "sampled":
            kept = sample_passages(model, share, args.seed, Path(args.cache))
        else:
            kept = vocabulary_passages(model, share, args.seed)
        print(f"{model.name}: {len(kept)} of {share} {kind} passages kept", file=sys.stderr)
        out.extend(kept)
    timings[f"{kind} passages"] = time.perf_counter() - start
    return out


def _within_positions(items: list[Item], models: list[LoadedModel], margin: int) -> list[Item]:
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


def _through(target: LoadedModel, calib: list[Item], args: argparse.Namespace, timings: dict[str, float]) -> Through:
    """Probes on the calibration passages and the target's own behaviour on them (see ``calibrate.distill``)."""
    start = time.perf_counter()
    kinds = [k.strip() for k in args.probes.split(",") if k.strip()]
    probes = make_probes(
        target,
        calib,
        kinds,
        args.probe_tokens,
        per_passage=args.probes_per_passage,
        seed=args.seed,
        cache=Path(args.cache),
    )
    timings[f"probes {target.name}"] = time.perf_counter() - start
    config = TrainConfig(
        lr=args.lr,
        batch_size=args.train_batch,
        max_epochs=args.train_epochs,
        max_minutes=args.train_minutes,
        anchor=args.anchor,
        ema=args.ema,
        heldout_probes=max(1, args.proxy_probes),
        seed=args.seed,
    )
    _, held = split_passages(len(calib), args.seed)
    start = time.perf_counter()
    through = Through.build(target, [it.context for it in calib], probes, set(held), config, Path(args.cache))
    timings[f"teacher {target.name}"] = time.perf_counter() - start
    print(
        f"{target.name}: {len(probes)} probes ({', '.join(kinds)}), {len(through.train_idx)} for training, "
        f"{len(through.held_idx)} held out",
        file=sys.stderr,
    )
    return through


def cmd_eval(args: argparse.Namespace) -> int:
    from calibrate.evaluate import run_eval

    return run_eval(args)


def cmd_list(args: argparse.Namespace) -> int:
    store = MapStore(args.dir)
    if not store.manifest_path.exists():
        raise ValueError(f"{args.dir}: no {store.manifest_path.name} here (run `fit` first)")
    defaults = store.manifest().get("defaults", {})
    print("| source | target | layers | method | R² | cos (mean baseline) | retrieval@1 | F1 | default |")
    print("|---|---|---|---|---:|---:|---:|---:|---|")
    for e in store.entries():
        d = defaults.get(f"{e['source']}__{e['target']}", {})
        m = e.get("metrics", {})
        f1 = e.get("eval", {}).get("f1")
        print(
            f"| {e['source']} | {e['target']} | {MapKey.from_entry(e).layers_label} | {e['method']} | "
            f"{m.get('r2', float('nan')):.3f} | {m.get('cosine', float('nan')):.3f} "
            f"({m.get('mean_baseline_cosine', float('nan')):.3f}) | {m.get('retrieval_at_1', float('nan')):.3f} | "
            f"{'' if f1 is None else f'{f1:.1f}'} | {'yes' if same_map(d, e) else ''} |"
        )
    return 0


def _to_float32(path: Path) -> None:
    """Rewrite a map file with float32 tensors (least-squares maps are solved and stored in float64; serving
    computes in the model's precision anyway), keeping its metadata."""
    aligner, meta = load_map(path)
    assert aligner.tensors is not None
    fit_info = aligner.fit_info
    aligner.set_state({k: v.to(torch.float32) for k, v in aligner.tensors.items()}, aligner.d_src, aligner.d_tgt)
    aligner.fit_info = fit_info
    aligner.save(str(path), meta)


def cmd_export(args: argparse.Namespace) -> int:
    """Copy the maps that would serve each mode (``aligners.resolve.choose``) into a new, small store."""
    store = MapStore(args.maps)
    calib = store.manifest().get("calibration")
    if not store.entries() or calib is None:
        raise ValueError(f"{args.maps}: no fitted maps with calibration records (run `fit` first)")
    n_layers = {name: info.get("n_layers") for name, info in calib["models"].items()}
    if None in n_layers.values():
        raise ValueError(f"{args.maps}: the calibration record lacks the models' layer counts (refit to export)")
    modes = parse_handover_modes(args.modes)
    if not modes:
        raise ValueError(f"--modes: name at least one of {', '.join(HANDOVER_MODES)}")
    keys: set[MapKey] = set()
    for source, target in sorted({(e["source"], e["target"]) for e in store.entries()}):
        for mode in modes:
            try:
                need = get_mode(mode).need
                main, below = choose(store.entries(), source, target, need, n_layers[source], n_layers[target])
            except MapNotFoundError as err:
                print(f"{source} -> {target} {mode}: nothing to export ({err})", file=sys.stderr)
                continue
            print(f"{source} -> {target} {mode}: {main.method} {main.layers_label}")
            keys.update([main, *below])
    out = MapStore(args.out)
    for key in out.copy_from(store, sorted(keys, key=lambda k: k.relpath)):
        _to_float32(out.root / key.relpath)
    manifest = out.manifest()
    manifest["calibration"] = calib
    out.write_manifest(manifest)
    print(f"exported {len(keys)} maps to {out.root}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    header = read_header(args.map)
    shown = {
        k: (json.loads(v) if k.startswith("meta.") or k in ("params", "fit_info") else v) for k, v in header.items()
    }
    print(json.dumps(shown, indent=1, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interlingua-calibrate",
        description="Fit alignment maps between two models' hidden spaces, evaluate them, and list them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def model_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
        p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or cuda:N,M (shard); default cpu")
        p.add_argument(
            "--cache",
            default=str(cache_home() / "cache"),
            help="folder for cached states (default $INTERLINGUA_HOME/cache)",
        )
        p.add_argument("--seed", type=int, default=0, help="data split, generator and fitting seed (default 0)")

    fit = sub.add_parser(
        "fit",
        help="extract paired states and fit maps",
        description=(
            "Run both models over N passages, pair per-token states by character offsets, fit every method for every "
            "layer pair and direction, and write the maps, a manifest and a report."
        ),
    )
    fit.add_argument("--source", required=True, help="model A: smollm2, gemma3, a folder, a .gguf file or a hub id")
    fit.add_argument("--target", required=True, help="model B (same forms as --source)")
    fit.add_argument(
        "--data",
        default=DEFAULT_DATA,
        help="SQuAD v1.1/v2.0 JSON, JSONL with context or text, hf:NAME[:SPLIT], or builtin:NAME (NAME: "
        f"{', '.join(BUILTINS)}); several, comma-separated, are interleaved (default {DEFAULT_DATA})",
    )
    fit.add_argument("--samples", type=int, default=1000, help="calibration passages (default 1000)")
    fit.add_argument(
        "--sampled",
        type=int,
        default=400,
        help="also calibrate on this many passages the models write themselves (half from each, seeded, cached; "
        "any pair can make them offline; 0 = none); added to --data's passages (default 400)",
    )
    fit.add_argument(
        "--vocab",
        type=int,
        default=0,
        help="also calibrate on this many passages of vocabulary words (half from each model's tokenizer, 100 words "
        "each in a seeded order, probed only by repeating them: tokens the other text never shows; measured on the "
        "real pair, no gain; 0 = none; default 0)",
    )
    fit.add_argument(
        "--eval-samples", type=int, default=200, help="QA items held out from calibration for `eval` (default 200)"
    )
    fit.add_argument(
        "--snap",
        default=SNAP_DEFAULT,
        help="for maps into the target's input embeddings (layer 0): how far the served states move toward the "
        "target's nearest embedding rows (0 = as mapped, 1 = the row itself); comma-separated candidates, the one "
        f"with the lowest proxy KL is stored with the map (the first without --proxy-probes); default {SNAP_DEFAULT}",
    )
    fit.add_argument(
        "--pairing",
        choices=PAIRINGS,
        default="end",
        help="how token states are paired across the tokenizers for maps into the target's input embeddings (layer "
        "0): end = tokens whose spans end at the same character (as for every deeper target layer); span = each "
        "source token with the target's own token for the same characters, where the target reads them as one "
        "(default end)",
    )
    fit.add_argument(
        "--layers",
        default="2,4,0+2,0+4",
        help="source layers, e.g. 8-16 or 2,4,8; A+B fits one map from layers A and B concatenated per token "
        "(default 2,4,0+2,0+4: blocks 2 and 4, alone and each beside the source's embeddings; low blocks carry what "
        "A read to text of other sources best, the embeddings each token's identity; the proxy KL picks what to train)",
    )
    fit.add_argument(
        "--target-layers",
        default=None,
        help="target layers; every pair with --layers is fitted (default: for each source layer, 0 (the input "
        "embeddings: `embeds`) and the layer at the same relative depth; for A+B, at the depth of the deeper one)",
    )
    fit.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated, from {', '.join(METHODS)} (default {','.join(DEFAULT_METHODS)})",
    )
    fit.add_argument("--directions", default="both", choices=["both", "forward"])
    fit.add_argument("--full", action="store_true", help="also fit the per-layer maps the `full` mode needs")
    fit.add_argument("--out", default="maps", help="map store folder (default ./maps)")
    train = fit.add_argument_group(
        "maps trained through the target (distill, distill-mlp) and the label-free ranking of every map"
    )
    train.add_argument(
        "--probes",
        default=",".join(DEFAULT_PROBES),
        help="what the target reads after a handed-over passage, from "
        f"{', '.join(PROBE_KINDS)} (default {','.join(DEFAULT_PROBES)}; qa only where items have questions; cloze "
        "asks which word fills a blank in a quote of any passage)",
    )
    train.add_argument("--probe-tokens", type=int, default=32, help="tokens per probe (default 32)")
    train.add_argument(
        "--probes-per-passage",
        type=int,
        default=1,
        help="probes drawn per passage from the kinds that apply (seeded); the teacher costs one target pass per "
        "probe (default 1)",
    )
    train.add_argument(
        "--proxy-probes",
        type=int,
        default=48,
        help="held-out probes every map is scored on (KL of the target's next-token distributions against reading "
        "the text itself; ranks maps and picks defaults); 0 = rank by R² instead (default 48)",
    )
    train.add_argument(
        "--train-top",
        type=int,
        default=1,
        help="layer pairs trained per way of entering the target (into layer 0; into a deeper layer), best proxy "
        "first (default 1)",
    )
    train.add_argument(
        "--lr",
        type=_lr,
        default=None,
        help="Adam step size: auto (default) = the weight preconditioned by each input dimension's RMS, and steps of "
        "0.015 x each parameter's own scale (a weight's RMS at its least-squares start, for a bias the RMS of the "
        "map's outputs), so that training does not depend on the scale of either model's states; or a number, one "
        "step size for every parameter (2e-4 trained the bundled smollm2 -> gemma3 maps)",
    )
    train.add_argument("--train-batch", type=int, default=4, help="probes per training step (default 4)")
    train.add_argument("--train-epochs", type=float, default=3.0, help="at most this many epochs (default 3)")
    train.add_argument(
        "--train-minutes",
        type=float,
        default=12.0,
        help="wall-clock budget per trained map (default 12: with two maps per direction a default fit of the "
        "real pair took 66 minutes on 2 CPU cores, 32 of them sampling text once; longer can improve them, see "
        "docs/results)",
    )
    train.add_argument(
        "--anchor",
        type=float,
        default=0.0,
        help="weight of ‖W − W₀‖² / ‖W₀‖² in the training loss, W₀ the map's least-squares start: keeps the trained "
        "map near it; with --lr auto W is the preconditioned weight, a different norm than with a fixed --lr "
        "(default 0: none)",
    )
    train.add_argument(
        "--ema",
        type=float,
        default=0.0,
        help="keep, score and write a moving average of the trained map instead of its last step: after every step "
        "average = ema x average + (1 - ema) x map, starting at the least-squares map; in [0, 1) (default 0: none)",
    )
    train.add_argument(
        "--train-snap",
        default="0",
        help="train maps into the target's input embeddings as they are served with this snap weight (their outputs "
        "moved that share of the way to the target's nearest embedding rows, searched among the rows of the "
        f"calibration text's tokens while training); '{AUTO}' = the --snap candidate the proxy chooses for the map's "
        "least-squares start; a weight in [0, 1), 0 = trained as mapped (default 0)",
    )
    model_options(fit)
    fit.set_defaults(func=cmd_fit)

    ev = sub.add_parser(
        "eval",
        help="evaluate the maps of a store on held-out items",
        description=(
            "Score the maps on items held out from calibration: representation metrics, continuation NLL (context "
            "benefit recovered) and extractive QA (EM/F1 with native, question-alone and identity-control baselines)."
        ),
    )
    ev.add_argument("--maps", required=True, help="map store folder written by `fit`")
    ev.add_argument("--data", default=None, help="evaluation data (default: the calibration data, held-out items)")
    ev.add_argument("--samples", type=int, default=100, help="held-out QA items (default 100)")
    ev.add_argument(
        "--modes",
        default="replace,full,last_token,embeds",
        help="comma-separated handover modes (default replace,full,last_token,embeds)",
    )
    ev.add_argument(
        "--screen-items",
        type=int,
        default=16,
        help="items each map is screened on before the best map per method is evaluated (default 16)",
    )
    ev.add_argument("--target-layers", default=None, help="screen only maps into these target layers")
    ev.add_argument(
        "--screen-by",
        default="auto",
        choices=["auto", "f1", "kl"],
        help="choose each method's best map by screening F1 in replace mode, or by the fit's proxy KL (no labels, "
        "no screening runs); auto = kl when every map has one (default auto)",
    )
    ev.add_argument(
        "--text-data",
        default=None,
        help="plain text (any --data form; questions ignored) scored by continuation CBR: the first part handed "
        "over, the rest scored, e.g. builtin:stdlib-docs",
    )
    ev.add_argument("--text-samples", type=int, default=60, help="plain-text passages (default 60)")
    ev.add_argument("--pairs", default=None, help="only these directions, e.g. smollm2__gemma3 (default all)")
    ev.add_argument("--methods", default=None, help="only these methods, e.g. linear,distill (default all)")
    ev.add_argument(
        "--grids",
        default="source",
        help="token grids the handed-over states follow, comma-separated: source (one state per source token), "
        "target (one per target token, from the aligned source token); default source",
    )
    ev.add_argument(
        "--snap",
        default=None,
        help="snap weights to evaluate the maps into layer 0 with instead of each map's own (comma-separated, one row "
        "each, e.g. 0,0.5,1: how far the states move toward the target's nearest rows); default: each map's",
    )
    ev.add_argument(
        "--chat",
        action="store_true",
        help="ask the question through the target's chat template, where it has one, in every condition alike",
    )
    ev.add_argument("--max-new-tokens", type=int, default=12)
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--out", default=None, help="report folder (default: the map store)")
    model_options(ev)
    ev.set_defaults(func=cmd_eval)

    ls = sub.add_parser("list", help="list the maps of a store with their metrics")
    ls.add_argument("dir")
    ls.set_defaults(func=cmd_list)
    export = sub.add_parser(
        "export",
        help="copy the maps each mode would be served with into a small store",
        description="For every direction and mode (embeds, replace, full, last_token), copy the map the server "
        "would choose by default (and the per-layer maps full needs) into a new store. Into an existing store the "
        "maps are added (same map key: replaced), so maps for different modes can come from different fits.",
    )
    export.add_argument("--maps", required=True, help="map store folder written by `fit`")
    export.add_argument("--out", required=True, help="the new store's folder (or an existing store to add to)")
    export.add_argument(
        "--modes",
        default=",".join(HANDOVER_MODES),
        help=f"only the maps serving these modes (default all: {','.join(HANDOVER_MODES)})",
    )
    export.set_defaults(func=cmd_export)
    show = sub.add_parser("show", help="print one map file's metadata")
    show.add_argument("map")
    show.set_defaults(func=cmd_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in (
        "samples",
        "eval_samples",
        "batch_size",
        "max_new_tokens",
        "screen_items",
        "probe_tokens",
        "train_top",
        "train_batch",
        "text_samples",
        "probes_per_passage",
    ):
        if getattr(args, name, 1) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("sampled", "vocab", "anchor"):
        if getattr(args, name, 0) < 0:
            parser.error(f"--{name} must be >= 0")
    if not 0 <= getattr(args, "ema", 0) < 1:
        parser.error("--ema must be in [0, 1) (0 = no averaging)")
    try:
        if getattr(args, "snap", None) is not None:
            parse_snaps(args.snap, "--snap")
        if getattr(args, "train_snap", None) is not None:
            parse_train_snap(args.train_snap)
    except ValueError as err:
        parser.error(str(err))
    try:
        return int(args.func(args))
    except (DataError, ModelSpecError, MapFileError, ValueError, LookupError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished extraction shards are cached; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
