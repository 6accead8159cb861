"""``eval``: how much of the target's native performance survives the handover, on items held out from calibration.

Per direction (source -> target), on the same held-out items:
- baselines: ``native`` (the target reads context and question), ``alone`` (question only), and the continuation
  NLL with the context read natively and with none;
- identity control: the target hands its own states to itself (identity map) in each mode and layer: the cost of the
  injection itself, apart from translation error;
- translated: every map (or those into ``--target-layers``) is screened in ``replace`` mode on a few items; the
  best layer pair of each method is then evaluated in every requested mode on all items (QA EM/F1, % of native,
  continuation NLL and context benefit recovered, CBR = (NLL_none − NLL_translated) / (NLL_none − NLL_native)).
The QA prompt is "{context}\\nQuestion: {question}\\nAnswer:", the context handed over, the rest read natively; greedy
decoding; the answer is the first non-empty line.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from aligners.resolve import choose
from aligners.store import MapKey, MapNotFoundError, MapStore
from calibrate.data import Item, read_items, split_items
from calibrate.layers import parse_layers, parse_snaps
from calibrate.probes import qa_suffix as plain_qa_suffix
from calibrate.report import heatmap
from calibrate.scoring import exact_match, f1_score, first_line
from service.runtime.generate import SamplingParams, generate, suffix_nll
from service.runtime.handover import GRIDS, Grid, LayerMap, prepare
from service.runtime.loading import LoadedModel, load_model
from service.runtime.modes import get_mode, parse_handover_modes
from service.runtime.prompt import Prompt

_CHAT: dict[int, Any] = {}  # id(tokenizer) -> tokenizer whose chat template wraps the question (``--chat``)


def set_chat(target: LoadedModel) -> None:
    """Ask questions through ``target``'s chat template (where it has one) in every condition alike."""
    if target.tokenizer.chat_template:
        _CHAT[id(target.tokenizer)] = target.tokenizer


def qa_suffix(item: Item, target: LoadedModel | None = None) -> str:
    """What the target reads after the passage: the plain QA prompt, or with ``set_chat`` a user turn asking the
    question and the assistant's turn opening (the passage itself stays before it, read or handed over)."""
    tokenizer = None if target is None else _CHAT.get(id(target.tokenizer))
    if tokenizer is None:
        return plain_qa_suffix(item.question)
    message = f"Question: {item.question}\nAnswer with a few words from the text above."
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
    )
    return "\n" + str(chat)


def split_continuation(context: str) -> tuple[str, str]:
    """(prefix, continuation): the last sentence is the continuation scored for NLL."""
    cuts = [m.end() for m in re.finditer(r"[.!?](?=\s)", context)]
    if not cuts:
        mid = len(context) // 2
        return context[:mid], context[mid:]
    return context[: cuts[-1]], context[cuts[-1] :]


PromptBuilder = Callable[[str, str], Prompt]


def batched(
    target: LoadedModel,
    builder: PromptBuilder,
    items: list[Item],
    params: SamplingParams,
    batch_size: int,
    with_nll: bool = True,
) -> dict[str, float]:
    """QA EM/F1 (and, ``with_nll``, the continuation NLL) of one condition over ``items``."""
    em, f1, nll = [], [], []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        outs = generate(target, [builder(it.context, qa_suffix(it, target)) for it in chunk], params)
        for it, out in zip(chunk, outs, strict=True):
            answer = first_line(out.text)
            em.append(exact_match(answer, it.answers))
            f1.append(f1_score(answer, it.answers))
        if with_nll:
            prompts = [builder(*split_continuation(it.context)) for it in chunk]
            nll.extend(suffix_nll(target, prompts))
    n = max(1, len(items))
    scores = {"em": sum(em) / n, "f1": sum(f1) / n, "n": float(len(items))}
    if with_nll:
        scores["nll"] = sum(nll) / n
    return scores


def text_nll(target: LoadedModel, builder: PromptBuilder, texts: list[str], batch_size: int) -> float:
    """Mean continuation NLL over plain texts: the first part handed over (by ``builder``), the rest scored."""
    nll: list[float] = []
    for start in range(0, len(texts), batch_size):
        nll.extend(suffix_nll(target, [builder(*split_continuation(t)) for t in texts[start : start + batch_size]]))
    return sum(nll) / max(1, len(nll))


def native_builder(target: LoadedModel) -> PromptBuilder:
    def build(text: str, suffix: str) -> Prompt:
        return prepare(target, target, text, suffix, "native", []).prompt

    return build


def alone_builder(target: LoadedModel) -> PromptBuilder:
    """No context at all: the target reads only the suffix (the question alone; the continuation alone for NLL)."""

    def build(text: str, suffix: str) -> Prompt:
        return Prompt("native", target.tokenize(suffix)[0], prefix_ids=[])

    return build


def identity_builder(target: LoadedModel, mode: str, layer: int) -> PromptBuilder:
    """The target's own states handed to itself: a perfect map, the same layer and mode (``HandoverMode.identity``)."""

    def build(text: str, suffix: str) -> Prompt:
        return get_mode(mode).identity(target, text, target.tokenize(suffix)[0], layer)

    return build


def translated_builder(
    source: LoadedModel, target: LoadedModel, mode: str, maps: list[LayerMap], grid: Grid = "source"
) -> PromptBuilder:
    def build(text: str, suffix: str) -> Prompt:
        return prepare(source, target, text, suffix, mode, maps, grid=grid).prompt

    return build


def _layer(mode: str, layer: int) -> int:
    """The layer a mode injects at when the map's own target layer is ``layer`` (embeds: always 0)."""
    fixed = get_mode(mode).fixed_layer
    return layer if fixed is None else fixed


def _maps_for(
    store: MapStore, source: LoadedModel, target: LoadedModel, key: MapKey, mode: str
) -> list[LayerMap] | None:
    """The maps a mode needs for this key's method and layers, chosen as the server chooses them (``choose``), or
    None when the store lacks them (``full`` needs per-layer maps)."""
    layer = _layer(mode, key.target_layer)
    try:
        need = get_mode(mode).need
        n_src, n_tgt = source.n_layers, target.n_layers
        main, below = choose(
            store.entries(), key.source, key.target, need, n_src, n_tgt, layer, key.method, key.source_layers
        )
    except MapNotFoundError:
        return None
    return [
        LayerMap.of(k.source_layers, k.target_layer, store.load(k, source.fingerprint, target.fingerprint)[0])
        for k in [*below, main]
    ]


def evaluate_direction(
    store: MapStore,
    source: LoadedModel,
    target: LoadedModel,
    items: list[Item],
    modes: list[str],
    params: SamplingParams,
    batch_size: int,
    screen_items: int = 16,
    target_layers: list[int] | None = None,
    texts: list[str] | None = None,
    screen_by: str = "f1",
    methods: list[str] | None = None,
    grids: tuple[Grid, ...] = ("source",),
    snaps: tuple[float | None, ...] = (None,),
) -> dict[str, Any]:
    """QA on ``items`` and, with ``texts``, the continuation CBR on plain text, for the best map of each method.

    ``screen_by="f1"`` screens every map in ``replace`` on ``screen_items`` items; ``"kl"`` takes the fit's held-out
    proxy KL instead (no screening runs, no labels needed). Each of ``snaps`` other than None replaces the snap weight
    of the maps into layer 0 (``LayerMap.snap``; None: each map's own), one row per weight.
    """
    texts = texts or []
    entries = [
        e
        for e in store.entries(source.name, target.name)
        if (target_layers is None or e["target_layer"] in target_layers)
        and not e.get("helper")
        and (methods is None or e["method"] in methods)
    ]
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    baselines = {
        "native": batched(target, native_builder(target), items, params, batch_size),
        "alone": batched(target, alone_builder(target), items, params, batch_size),
    }
    nll_none = [
        suffix_nll(target, [Prompt("native", target.tokenize(split_continuation(it.context)[1])[0], prefix_ids=[])])[0]
        for it in items
    ]
    baselines["none"] = {"nll": sum(nll_none) / max(1, len(nll_none))}
    if texts:
        baselines["text"] = {
            "native": text_nll(target, native_builder(target), texts, batch_size),
            "none": text_nll(target, alone_builder(target), texts, batch_size),
            "n": float(len(texts)),
        }
    timings["baselines"] = time.perf_counter() - t0

    def text_cbr(nll: float) -> float:
        t = baselines["text"]
        gap = t["none"] - t["native"]
        return (t["none"] - nll) / gap if gap else float("nan")

    def cbr(nll: float) -> float:
        gap = baselines["none"]["nll"] - baselines["native"]["nll"]
        return (baselines["none"]["nll"] - nll) / gap if gap else float("nan")

    t0 = time.perf_counter()
    screen: list[dict[str, Any]] = []
    for e in tqdm(entries if screen_by == "f1" else [], desc=f"screen {source.name}->{target.name}", unit="map"):
        key = MapKey.from_entry(e)
        maps = _maps_for(store, source, target, key, "replace")
        assert maps is not None  # the entry itself exists
        scores = batched(
            target, translated_builder(source, target, "replace", maps), items[:screen_items], params, batch_size
        )
        screen.append({**key.as_dict(), "f1": scores["f1"], "nll": scores["nll"]})
    if screen_by == "kl":
        screen = [{**MapKey.from_entry(e).as_dict(), "kl": e["metrics"]["kl"]} for e in entries if "kl" in e["metrics"]]
    timings["screen"] = time.perf_counter() - t0

    best: dict[str, dict[str, Any]] = {}
    for row in screen:
        # Higher F1 wins; lower KL wins.
        better = (
            (row["f1"] > best[row["method"]]["f1"] if screen_by == "f1" else row["kl"] < best[row["method"]]["kl"])
            if row["method"] in best
            else True
        )
        if better:
            best[row["method"]] = row

    t0 = time.perf_counter()
    translated, identity = [], {}
    for _, row in tqdm(sorted(best.items()), desc=f"modes {source.name}->{target.name}", unit="method"):
        key = MapKey.from_entry(row)
        for mode, grid, snap in [(m, g, w) for m in modes for g in grids for w in snaps]:
            layer = _layer(mode, key.target_layer)
            maps = _maps_for(store, source, target, key, mode)
            if maps is None:
                translated.append({**key.as_dict(), "mode": mode, "grid": grid, "missing": "maps not in store"})
                continue
            maps = [replace(m, snap_weight=snap) for m in maps]
            # last_token places its vector after every scored continuation token: its NLL would be the no-context
            # NLL by construction, so none is reported.
            with_nll = get_mode(mode).scores_continuation
            builder = translated_builder(source, target, mode, maps, grid)
            scores = batched(target, builder, items, params, batch_size, with_nll)
            if texts and with_nll:
                scores["text_nll"] = text_nll(target, builder, texts, batch_size)
                scores["text_cbr"] = text_cbr(scores["text_nll"])
            if (mode, layer) not in identity:
                identity[(mode, layer)] = batched(
                    target, identity_builder(target, mode, layer), items, params, batch_size, with_nll
                )
            translated.append(
                {
                    **key.as_dict(),
                    "mode": mode,
                    "grid": grid,
                    "snap": maps[-1].snap,
                    "layers": maps[-1].label,  # the map this mode used
                    **scores,
                    "cbr": cbr(scores["nll"]) if with_nll else None,
                    "pct_native": 100 * scores["f1"] / baselines["native"]["f1"]
                    if baselines["native"]["f1"]
                    else float("nan"),
                    "identity_f1": identity[(mode, layer)]["f1"],
                }
            )
    timings["modes"] = time.perf_counter() - t0
    return {
        "source": source.name,
        "target": target.name,
        "n_items": len(items),
        "baselines": baselines,
        "identity": [
            {"mode": m, "layer": layer, **s, "cbr": cbr(s["nll"]) if "nll" in s else None}
            for (m, layer), s in identity.items()
        ],
        "screen": screen,
        "translated": translated,
        "timings_s": timings,
    }


def eval_markdown(result: dict[str, Any]) -> str:
    b = result["baselines"]
    text = b.get("text")
    lines = [
        f"### {result['source']} -> {result['target']} ({result['n_items']} held-out items"
        + (f", {int(text['n'])} plain-text passages" if text else "")
        + (", question through the target's chat template" if result.get("chat") else "")
        + ")",
        "",
        f"Native F1 {b['native']['f1']:.1f} (EM {b['native']['em']:.1f}); question alone F1 {b['alone']['f1']:.1f}; "
        f"continuation NLL native {b['native']['nll']:.3f}, no context {b['none']['nll']:.3f}."
        + (f" Plain text: NLL native {text['native']:.3f}, no context {text['none']:.3f}." if text else ""),
        "",
        "| method | layers | mode | EM | F1 | % of native | F1 alone | identity control F1 | NLL | CBR |"
        + (" text CBR |" if text else ""),
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if text else ""),
    ]
    for r in result["translated"]:
        layers = r.get("layers") or MapKey.from_entry(r).layers_label
        mode = (
            r["mode"]
            + (" (target grid)" if r.get("grid") == "target" else "")
            + (f" (snap {r['snap']:g})" if r.get("snap") else "")
        )
        if "missing" in r:
            lines.append(f"| {r['method']} | {layers} | {mode} | n/a ({r['missing']}) | | | | | | |")
            continue
        pct = "n/a" if r["pct_native"] != r["pct_native"] else f"{r['pct_native']:.0f}%"
        nll = "n/a" if r.get("nll") is None else f"{r['nll']:.3f}"
        cbr = "n/a" if r.get("cbr") is None else f"{r['cbr']:.2f}"
        tcbr = "n/a" if r.get("text_cbr") is None else f"{r['text_cbr']:.2f}"
        lines.append(
            f"| {r['method']} | {layers} | {mode} | {r['em']:.1f} | {r['f1']:.1f} | {pct} | "
            f"{b['alone']['f1']:.1f} | {r['identity_f1']:.1f} | {nll} | {cbr} |" + (f" {tcbr} |" if text else "")
        )
    return "\n".join(lines) + "\n"


def run_eval(args: argparse.Namespace) -> int:
    store = MapStore(args.maps)
    manifest = store.manifest()
    calib = manifest.get("calibration")
    if not manifest["maps"] or calib is None:
        raise ValueError(f"{args.maps}: no fitted maps with calibration records (run `fit` first)")
    if args.data is None:
        items = read_items(calib["data"], seed=calib["seed"], builtin_size=calib["samples"] + calib["eval_samples"])
        _, held = split_items(items, calib["samples"], calib["eval_samples"], calib["seed"])
    else:
        held = [it for it in read_items(args.data, seed=args.seed) if it.has_qa]
    items = held[: args.samples]
    texts = (
        [it.context for it in read_items(args.text_data, seed=args.seed)][: args.text_samples] if args.text_data else []
    )
    if not items:
        raise ValueError("no held-out QA items to evaluate on")
    models = {
        name: load_model(info["spec"], name=name, dtype=args.dtype, device=args.device)
        for name, info in calib["models"].items()
    }
    grids = tuple(g.strip() for g in args.grids.split(",") if g.strip())
    if not grids or any(g not in GRIDS for g in grids):
        raise ValueError(f"--grids takes a comma-separated list of {', '.join(GRIDS)}, got {args.grids!r}")
    modes = parse_handover_modes(args.modes)
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    out = Path(args.out or args.maps)
    pairs = sorted({(e["source"], e["target"]) for e in manifest["maps"]})
    if args.pairs:
        wanted = {tuple(p.strip().split("__", 1)) for p in args.pairs.split(",") if p.strip()}
        unknown = sorted("__".join(p) for p in wanted - set(pairs))
        if unknown:
            raise ValueError(f"--pairs names {unknown}, not in the store; pairs: {['__'.join(p) for p in pairs]}")
        pairs = [p for p in pairs if p in wanted]
    has_kl = all("kl" in e["metrics"] for e in manifest["maps"] if not e.get("helper"))
    screen_by = ("kl" if has_kl else "f1") if args.screen_by == "auto" else args.screen_by
    if screen_by == "kl" and not has_kl:
        raise ValueError("--screen-by kl needs maps scored by the proxy KL (fit with --proxy-probes > 0)")
    results = []
    for source_name, target_name in pairs:
        if args.chat:
            set_chat(models[target_name])
        result = evaluate_direction(
            store,
            models[source_name],
            models[target_name],
            items,
            modes,
            params,
            args.batch_size,
            args.screen_items,
            parse_layers(args.target_layers) if args.target_layers else None,
            texts,
            screen_by,
            [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None,
            grids,
            (None,) if args.snap is None else parse_snaps(args.snap, "--snap"),
        )
        result["chat"] = bool(args.chat and models[target_name].tokenizer.chat_template)
        results.append(result)
        values: dict[tuple[tuple[int, ...], str], float] = {}
        for row in result["screen"]:
            cell = (MapKey.from_entry(row).source_layers, row["method"])
            score = row["f1"] if screen_by == "f1" else row["kl"]
            values[cell] = (
                max(values.get(cell, float("-inf")), score)
                if screen_by == "f1"
                else min(values.get(cell, float("inf")), score)
            )
        heatmap(
            values,
            f"{source_name} -> {target_name}: "
            + ("replace-mode F1 (best target layer)" if screen_by == "f1" else "proxy KL (best target layer)"),
            out / f"heatmap-{source_name}__{target_name}.png",
            "F1" if screen_by == "f1" else "KL",
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval-report.json").write_text(json.dumps(results, indent=1, default=float))
    md = "\n".join(eval_markdown(r) for r in results)
    (out / "eval-report.md").write_text(md)
    print(md)
    if screen_by == "f1":
        _record_screening(store, results, args.screen_items)
    return 0


def _record_screening(store: MapStore, results: list[dict[str, Any]], screen_items: int) -> None:
    """Record screening F1 in the manifest and make the best task F1 the default map (ties change nothing)."""
    manifest = store.manifest()
    screened = {MapKey.from_entry(r): r["f1"] for res in results for r in res["screen"]}
    for e in manifest["maps"]:
        k = MapKey.from_entry(e)
        if k in screened:
            e["eval"] = {"f1": screened[k], "items": screen_items}
    store.write_manifest(manifest)
    for change in store.choose_defaults(by="f1"):
        print(change, file=sys.stderr)
