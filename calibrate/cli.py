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
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from aligners import MapFileError, read_header
from aligners import load as load_map
from aligners.resolve import choose
from aligners.store import MapKey, MapNotFoundError, MapStore, same_map
from calibrate.config import RANK_BY, SCREEN_BY, ConfigError, EvalConfig, FitConfig, default
from calibrate.evaluation import evaluate
from calibrate.layers import AUTO
from calibrate.pipeline import fit
from calibrate.probes import PROBE_KINDS
from calibrate.search import ANCHORS, LR_RELS
from calibrate.sources import BUILTINS, DataError
from calibrate.sweep import METHODS, PAIRINGS
from service.runtime.loading import ModelSpecError
from service.runtime.modes import HANDOVER_MODES, get_mode, parse_handover_modes


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


def _auto(text: str) -> float | None:
    """``auto`` (None: ``fit`` chooses) or a number."""
    if text == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a number, got {text!r}") from None


def _config(cls: type[Any], args: argparse.Namespace) -> Any:
    """The config dataclass from the parsed flags (each flag's dest is the field's name)."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


def cmd_fit(args: argparse.Namespace) -> int:
    result = fit(_config(FitConfig, args))
    for change in result.defaults:
        print(change, file=sys.stderr)
    print(result.markdown())
    print(f"wrote {len(result.rows)} maps and {result.store / 'manifest.json'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    print(evaluate(_config(EvalConfig, args)).markdown())
    return 0


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
    modes = parse_handover_modes(args.modes)
    if not modes:
        raise ValueError(f"--modes: name at least one of {', '.join(HANDOVER_MODES)}")
    keys: set[MapKey] = set()
    for source, target in sorted({(e["source"], e["target"]) for e in store.entries()}):
        for mode in modes:
            try:
                need = get_mode(mode).need
                main, below = choose(store.entries(), source, target, need)
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


def _d(config: type, name: str) -> Any:
    """An option's default as the CLI shows and parses it: lists comma-separated, numbers as they read."""
    value = default(config, name)
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value) if isinstance(value, os.PathLike) else value


def _option(parser: Any, config: type, flag: str, **kwargs: Any) -> None:
    """A flag whose destination is the config field of the same name and whose default is that field's."""
    parser.add_argument(flag, default=_d(config, flag[2:].replace("-", "_")), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interlingua-calibrate",
        description="Fit alignment maps between two models' hidden spaces, evaluate them, and list them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def model_options(p: argparse.ArgumentParser) -> None:
        _option(p, FitConfig, "--dtype", choices=["float32", "bfloat16", "float16"])
        _option(p, FitConfig, "--device", help="cpu, cuda, cuda:N or cuda:N,M (shard); %(default)s")
        _option(p, FitConfig, "--cache", help="folder for cached states (default $INTERLINGUA_HOME/cache)")
        _option(p, FitConfig, "--seed", type=int, help="data split, generator and fitting seed (default %(default)s)")

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
    _option(
        fit,
        FitConfig,
        "--data",
        help="SQuAD v1.1/v2.0 JSON, JSONL with context or text, hf:NAME[:SPLIT], builtin:NAME (NAME: "
        f"{', '.join(BUILTINS)}), or passages the models make themselves: sampled:N, vocab:N (the same as --sampled, "
        "--vocab); several, comma-separated, are interleaved (default %(default)s)",
    )
    _option(fit, FitConfig, "--samples", type=int, help="calibration passages (default %(default)s)")
    _option(
        fit,
        FitConfig,
        "--sampled",
        type=int,
        help="also calibrate on this many passages the models write themselves (half from each, seeded, cached; "
        "any pair can make them offline; 0 = none; the same as sampled:N in --data); added to --data's passages "
        "(default 400)",
    )
    _option(
        fit,
        FitConfig,
        "--vocab",
        type=int,
        help="also calibrate on this many passages of vocabulary words (half from each model's tokenizer, 100 words "
        "each in a seeded order, probed only by repeating them: tokens the other text never shows; measured on the "
        "real pair, no gain; 0 = none; the same as vocab:N in --data; default 0)",
    )
    _option(
        fit,
        FitConfig,
        "--eval-samples",
        type=int,
        help="QA items held out from calibration for `eval` (default %(default)s)",
    )
    _option(
        fit,
        FitConfig,
        "--snap",
        help="for maps into the target's input embeddings (layer 0): how far the served states move toward the "
        "target's nearest embedding rows (0 = as mapped, 1 = the row itself); trained maps into a deeper layer carry "
        "the trained map into layer 0 from their source layers as a readout and move their states by the same "
        "correction; comma-separated candidates, the one with the lowest proxy KL is stored with the map (the first "
        "without --proxy-probes); default %(default)s",
    )
    _option(
        fit,
        FitConfig,
        "--pairing",
        choices=PAIRINGS,
        help="how token states are paired across the tokenizers for maps into the target's input embeddings (layer "
        "0): end = tokens whose spans end at the same character (as for every deeper target layer); span = each "
        "source token with the target's own token for the same characters, where the target reads them as one; "
        "auto = both, the one the ranking proxy scores lower is kept (default %(default)s)",
    )
    _option(
        fit,
        FitConfig,
        "--layers",
        help="source layers, e.g. 8-16 or 2,4,8; A+B fits one map from layers A and B concatenated per token "
        "(default %(default)s: blocks 2 and 4, alone and each beside the source's embeddings; low blocks carry what "
        "A read to text of other sources best, the embeddings each token's identity; the proxy KL picks what to train)",
    )
    _option(
        fit,
        FitConfig,
        "--target-layers",
        help="target layers; every pair with --layers is fitted (default: for each source layer, 0 (the input "
        "embeddings: `embeds`) and the layer at the same relative depth; for A+B, at the depth of the deeper one)",
    )
    _option(fit, FitConfig, "--methods", help=f"comma-separated, from {', '.join(METHODS)} (default %(default)s)")
    _option(fit, FitConfig, "--directions", choices=["both", "forward"])
    fit.add_argument("--full", action="store_true", help="also fit the per-layer maps the `full` mode needs")
    _option(fit, FitConfig, "--out", help="map store folder (default %(default)s)")
    train = fit.add_argument_group(
        "maps trained through the target (distill, distill-mlp) and the label-free ranking of every map"
    )
    _option(
        train,
        FitConfig,
        "--probes",
        help="what the target reads after a handed-over passage, from "
        f"{', '.join(PROBE_KINDS)} (default %(default)s; qa only where items have questions; cloze "
        "asks which word fills a blank in a quote of any passage)",
    )
    _option(train, FitConfig, "--probe-tokens", type=int, help="tokens per probe (default %(default)s)")
    _option(
        train,
        FitConfig,
        "--probes-per-passage",
        type=int,
        help="probes drawn per passage from the kinds that apply (seeded); the teacher costs one target pass per "
        "probe (default %(default)s)",
    )
    _option(
        train,
        FitConfig,
        "--proxy-probes",
        type=int,
        help="held-out probes every map is scored on (KL of the target's next-token distributions against reading "
        "the text itself; ranks maps and picks defaults); 0 = rank by R² instead (default %(default)s)",
    )
    _option(
        train,
        FitConfig,
        "--proxy-data",
        help="passages of another source than --data (any --data form; none of them is calibrated on) that every map "
        "is also scored on, as served: the proxy KL on another source (kl_xsrc), which ranks maps by default; choose "
        "a source your evaluation does not use; none = only the in-source proxy (default %(default)s: docstrings of "
        "standard-library modules that neither the default data nor builtin:stdlib-docs uses)",
    )
    _option(
        train,
        FitConfig,
        "--proxy-samples",
        type=int,
        help="passages of --proxy-data scored on, one probe each (default %(default)s)",
    )
    train.add_argument(
        "--both-proxies",
        action="store_true",
        help="score every map by both proxies, the in-source one and the other source's (to compare them; one more "
        "proxy score per map); by default only the ranking proxy scores the least-squares maps, both the trained ones",
    )
    _option(
        train,
        FitConfig,
        "--rank-by",
        choices=RANK_BY,
        help="the proxy that ranks every map, chooses pairings, snap weights and training recipes, and picks the "
        "default maps: kl (held-out probes of the calibration text) or kl_xsrc (--proxy-data's); auto = kl_xsrc "
        "where there is --proxy-data, else kl (default %(default)s)",
    )
    _option(
        train,
        FitConfig,
        "--train-top",
        type=int,
        help="layer pairs trained per way of entering the target (into layer 0; into a deeper layer), best proxy "
        "first (default %(default)s)",
    )
    _option(
        train,
        FitConfig,
        "--lr",
        type=_lr,
        help="Adam step size: auto (default) = the weight preconditioned by each input dimension's RMS, and steps of "
        f"a multiple of each parameter's own scale ({' or '.join(map(str, LR_RELS))}, tried in pilots, the ranking "
        f"proxy keeps the better; {LR_RELS[0]} where the budget runs no pilots; a weight's scale is its RMS at its "
        "least-squares start, a bias's the RMS of the map's outputs), so that training does not depend on the scale "
        "of either model's states; or a number, one step size for every parameter, not searched",
    )
    _option(
        train,
        FitConfig,
        "--lr-rel",
        type=_auto,
        help="with --lr auto: the step size as a multiple of each parameter's own scale, fixed (not searched); auto "
        "= searched (default)",
    )
    _option(train, FitConfig, "--train-batch", type=int, help="probes per training step (default %(default)s)")
    _option(train, FitConfig, "--train-epochs", type=float, help="at most this many epochs (default %(default)s)")
    _option(
        train,
        FitConfig,
        "--train-minutes",
        type=_auto,
        help="wall-clock time per trained map after its pilots; auto = an equal share of what --budget leaves "
        "(default)",
    )
    _option(
        train,
        FitConfig,
        "--budget",
        type=float,
        help="minutes per direction for the target's probes, screening the least-squares maps, the pilots that "
        "choose each training recipe (run only where each can train 2 held-out evaluations long at the measured "
        "step time) and the training (default %(default)s: the real small pair on 2 CPU cores; "
        "reading and encoding the text, and writing passages the models make, come before and are not counted); "
        "a progress bar shows it spent, the report its split",
    )
    _option(
        train,
        FitConfig,
        "--anchor",
        type=_auto,
        help="weight of ‖W − W₀‖² / ‖W₀‖² in the training loss, W₀ the map's least-squares start: keeps the trained "
        "map near it; with --lr auto W is the preconditioned weight, a different norm than with a fixed --lr; auto "
        f"= each of {', '.join(f'{a:g}' for a in ANCHORS)} tried in pilots at the chosen step size, the ranking proxy "
        f"keeps the best (default; where the budget runs no pilots, {max(ANCHORS):g})",
    )
    _option(
        train,
        FitConfig,
        "--ema",
        type=float,
        help="keep, score and write a moving average of the trained map instead of its last step: after every step "
        "average = ema x average + (1 - ema) x map, starting at the least-squares map; in [0, 1) "
        "(default %(default)s: none)",
    )
    _option(
        train,
        FitConfig,
        "--backoff",
        type=float,
        help="when a held-out evaluation is no better than the best so far, training goes back to the best state and "
        "multiplies every step size by this (Adam's moments reset); in (0, 1], 1 = never go back "
        "(default %(default)s)",
    )
    _option(
        train,
        FitConfig,
        "--row-steps",
        action=argparse.BooleanOptionalAction,
        help="with --lr auto, step sizes per output dimension of a map (its weight and bias held divided by each "
        "output dimension's RMS), not one per tensor: targets whose states carry a few dimensions far larger than the "
        "rest otherwise move their typical dimensions by large relative steps (default on; --no-row-steps: one step "
        "size per tensor)",
    )
    _option(
        train,
        FitConfig,
        "--train-snap",
        help="train maps into the target's input embeddings as they are served with this snap weight (their outputs "
        "moved that share of the way to the target's nearest embedding rows, searched among the rows of the "
        f"calibration text's tokens while training); '{AUTO}' = the --snap candidate the proxy chooses for the map's "
        "least-squares start; a weight in [0, 1), 0 = trained as mapped (default %(default)s)",
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
    _option(ev, EvalConfig, "--data", help="evaluation data (default: the calibration data, held-out items)")
    _option(ev, EvalConfig, "--samples", type=int, help="held-out QA items (default %(default)s)")
    _option(ev, EvalConfig, "--modes", help="comma-separated handover modes (default %(default)s)")
    _option(
        ev,
        EvalConfig,
        "--screen-items",
        type=int,
        help="items each map is screened on before the best map per method is evaluated (default %(default)s)",
    )
    _option(ev, EvalConfig, "--target-layers", help="screen only maps into these target layers")
    _option(
        ev,
        EvalConfig,
        "--screen-by",
        choices=SCREEN_BY,
        help="choose each method's best map by screening F1 in replace mode, or by the fit's proxy KL on the "
        "calibration text (kl), on another source (kl_xsrc) or the one the fit ranked by (proxy): no labels, no "
        "screening runs; auto = proxy, else kl, where every map has one (default %(default)s)",
    )
    _option(
        ev,
        EvalConfig,
        "--text-data",
        help="plain text (any --data form; questions ignored) scored by continuation CBR: the first part handed "
        "over, the rest scored, e.g. builtin:stdlib-docs",
    )
    _option(ev, EvalConfig, "--text-samples", type=int, help="plain-text passages (default %(default)s)")
    _option(ev, EvalConfig, "--pairs", help="only these directions, e.g. smollm2__gemma3 (default all)")
    _option(ev, EvalConfig, "--methods", help="only these methods, e.g. linear,distill (default all)")
    _option(
        ev,
        EvalConfig,
        "--grids",
        help="token grids the handed-over states follow, comma-separated: source (one state per source token), "
        "target (one per target token, from the aligned source token); default source",
    )
    _option(
        ev,
        EvalConfig,
        "--snap",
        help="snap weights to evaluate the maps into layer 0 (and deeper maps with a readout) with instead of each "
        "map's own (comma-separated, one row each, e.g. 0,0.5,1: how far the states move toward the target's nearest "
        "rows); default: each map's",
    )
    ev.add_argument(
        "--chat",
        action="store_true",
        help="ask the question through the target's chat template, where it has one, in every condition alike",
    )
    _option(
        ev,
        EvalConfig,
        "--source-answers",
        action=argparse.BooleanOptionalAction,
        help="also score the source model reading the text and answering itself (what asking it instead of handing "
        "over gives; default on)",
    )
    ev.add_argument("--max-new-tokens", type=int, default=12)
    ev.add_argument("--batch-size", type=int, default=16)
    _option(ev, EvalConfig, "--out", help="report folder (default: the map store)")
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
    try:
        return int(args.func(args))
    except ConfigError as err:
        print(f"{parser.prog}: error: --{err.option.replace('_', '-')} {err.problem}", file=sys.stderr)
        return 2
    except (DataError, ModelSpecError, MapFileError, ValueError, LookupError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished extraction shards are cached; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
