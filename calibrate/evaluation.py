"""``eval``: how much of the target's native performance survives the handover, on items held out from calibration.

Per direction (source -> target), on the same held-out items:
- baselines: ``native`` (the target reads context and question), ``alone`` (question only), the continuation
  NLL with the context read natively and with none, and ``source``: the source model reading the text and answering
  itself (what a user gets by asking A instead of handing over; ``EvalConfig.source_answers``);
- identity control: the target hands its own states to itself (identity map) in each mode and layer: the cost of the
  injection itself, apart from translation error;
- translated: every map (or those into ``--target-layers``) is screened in ``replace`` mode on a few items; the
  best layer pair of each method is then evaluated in every requested mode on all items (QA EM/F1, % of native,
  continuation NLL and context benefit recovered, CBR = (NLL_none − NLL_translated) / (NLL_none − NLL_native)).
The QA prompt is "{context}\\nQuestion: {question}\\nAnswer:", the context handed over, the rest read natively; greedy
decoding; the answer is the first non-empty line.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from tqdm import tqdm

from aligners.resolve import choose
from aligners.store import MapKey, MapNotFoundError, MapStore, best_first
from calibrate.config import EvalConfig
from calibrate.probes import qa_suffix as plain_qa_suffix
from calibrate.report import heatmap
from calibrate.scoring import exact_match, f1_score, first_line
from calibrate.sources import Item, read_items, split_items
from service.runtime.generate import SamplingParams, generate, suffix_nll
from service.runtime.handover import Grid, LayerMap, prepare
from service.runtime.loading import LoadedModel, load_model
from service.runtime.modes import NATIVE, REPLACE, HandoverMode
from service.runtime.prompt import Prompt


def qa_suffix(item: Item, model: LoadedModel | None = None, chat: bool = False) -> str:
    """What a model reads after the passage: the plain QA prompt, or with ``chat`` (where ``model`` has a chat
    template) a user turn asking the question and the assistant's turn opening (the passage itself stays before it,
    read or handed over)."""
    if not chat or model is None or not model.tokenizer.chat_template:
        return plain_qa_suffix(item.question)
    message = f"Question: {item.question}\nAnswer with a few words from the text above."
    text = model.tokenizer.apply_chat_template(
        [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
    )
    return "\n" + str(text)


def split_continuation(context: str) -> tuple[str, str]:
    """(prefix, continuation): the last sentence is the continuation scored for NLL."""
    cuts = [m.end() for m in re.finditer(r"[.!?](?=\s)", context)]
    if not cuts:
        mid = len(context) // 2
        return context[:mid], context[mid:]
    return context[: cuts[-1]], context[cuts[-1] :]


PromptBuilder = Callable[[str, str], Prompt]


@dataclass
class Bench:
    """One model answering the held-out items (and scoring plain text) under any condition: a prompt builder."""

    model: LoadedModel
    items: list[Item]
    params: SamplingParams
    batch_size: int
    chat: bool = False
    texts: list[str] = field(default_factory=list)
    _identity: dict[tuple[str, int], dict[str, float]] = field(default_factory=dict, repr=False)

    def identity(self, mode: HandoverMode, layer: int) -> dict[str, float]:
        """The identity control of ``mode`` at ``layer``: the model handing its own states to itself (what the mode
        itself costs, whatever the map), scored once per mode and layer."""
        if (mode.name, layer) not in self._identity:
            builder = identity_builder(self.model, mode, layer)
            self._identity[(mode.name, layer)] = self.qa(builder, with_nll=mode.scores_continuation)
        return self._identity[(mode.name, layer)]

    def qa(self, builder: PromptBuilder, items: list[Item] | None = None, with_nll: bool = True) -> dict[str, float]:
        """QA EM/F1 (and, ``with_nll``, the continuation NLL) of one condition over ``items`` (default all)."""
        return self.qa_per_item(builder, items, with_nll)[0]

    def qa_per_item(
        self, builder: PromptBuilder, items: list[Item] | None = None, with_nll: bool = True
    ) -> tuple[dict[str, float], list[float]]:
        """``qa``'s scores and each item's F1, in order (for paired comparisons of conditions on the same items)."""
        items = self.items if items is None else items
        em, f1, nll = [], [], []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            prompts = [builder(it.context, qa_suffix(it, self.model, self.chat)) for it in chunk]
            for it, out in zip(chunk, generate(self.model, prompts, self.params), strict=True):
                answer = first_line(out.text)
                em.append(exact_match(answer, it.answers))
                f1.append(f1_score(answer, it.answers))
            if with_nll:
                nll.extend(suffix_nll(self.model, [builder(*split_continuation(it.context)) for it in chunk]))
        n = max(1, len(items))
        scores = {"em": sum(em) / n, "f1": sum(f1) / n, "n": float(len(items))}
        if with_nll:
            scores["nll"] = sum(nll) / n
        return scores, f1

    def text_nll(self, builder: PromptBuilder) -> float:
        """Mean continuation NLL over the plain texts: the first part handed over (by ``builder``), the rest scored."""
        nll: list[float] = []
        for start in range(0, len(self.texts), self.batch_size):
            chunk = self.texts[start : start + self.batch_size]
            nll.extend(suffix_nll(self.model, [builder(*split_continuation(t)) for t in chunk]))
        return sum(nll) / max(1, len(nll))


def native_builder(target: LoadedModel) -> PromptBuilder:
    def build(text: str, suffix: str) -> Prompt:
        return prepare(target, target, text, suffix, NATIVE, []).prompt

    return build


def alone_builder(target: LoadedModel) -> PromptBuilder:
    """No context at all: the target reads only the suffix (the question alone; the continuation alone for NLL)."""

    def build(text: str, suffix: str) -> Prompt:
        return Prompt(NATIVE, target.tokenize(suffix)[0], prefix_ids=[])

    return build


def identity_builder(target: LoadedModel, mode: HandoverMode, layer: int) -> PromptBuilder:
    """The target's own states handed to itself: a perfect map, the same layer and mode (``HandoverMode.identity``)."""

    def build(text: str, suffix: str) -> Prompt:
        return mode.identity(target, text, target.tokenize(suffix)[0], layer)

    return build


def translated_builder(
    source: LoadedModel, target: LoadedModel, mode: HandoverMode, maps: list[LayerMap], grid: Grid = "source"
) -> PromptBuilder:
    def build(text: str, suffix: str) -> Prompt:
        return prepare(source, target, text, suffix, mode, maps, grid=grid).prompt

    return build


def _maps_for(
    store: MapStore, source: LoadedModel, target: LoadedModel, key: MapKey, mode: HandoverMode
) -> list[LayerMap] | None:
    """The maps a mode needs for this key's method and layers, chosen as the server chooses them (``choose``), or
    None when the store lacks them (``full`` needs per-layer maps)."""
    layer = mode.injects_at(key.target_layer)
    try:
        need = mode.need
        main, below = choose(store.entries(), key.source, key.target, need, layer, key.method, key.source_layers)
    except MapNotFoundError:
        return None
    return [
        LayerMap.of(k.source_layers, k.target_layer, store.load(k, source.fingerprint, target.fingerprint)[0])
        for k in [*below, main]
    ]


def baselines(bench: Bench, source: LoadedModel | None = None) -> dict[str, Any]:
    """The conditions every translated row is read against: the target reading context and question (``native``),
    the question alone (``alone``), the continuation with no context (``none``), plain text read natively and with
    none (``text``), and with ``source`` the source model reading the text and answering itself (``source``: what
    asking A instead of handing over would give)."""
    target = bench.model
    out: dict[str, Any] = {"native": bench.qa(native_builder(target)), "alone": bench.qa(alone_builder(target))}
    out["none"] = {"nll": out["alone"]["nll"]}  # the continuation read with no context: what ``alone`` scores
    if bench.texts:
        out["text"] = {
            "native": bench.text_nll(native_builder(target)),
            "none": bench.text_nll(alone_builder(target)),
            "n": float(len(bench.texts)),
        }
    if source is not None:
        asked = replace(bench, model=source, texts=[])
        out["source"] = {"name": source.name, **asked.qa(native_builder(source), with_nll=False)}
    return out


def screen(
    bench: Bench, store: MapStore, source: LoadedModel, entries: list[dict[str, Any]], by: str, n_items: int
) -> list[dict[str, Any]]:
    """A score per map for choosing each method's best: ``by="f1"`` screens every map in ``replace`` on the first
    ``n_items`` items; ``"kl"`` (``"kl_xsrc"``) takes the fit's proxy KL on held-out probes of the calibration text
    (of the other source) instead: no screening runs, no labels needed."""
    if by != "f1":  # a proxy the fit scored every map by
        return [{**MapKey.from_entry(e).as_dict(), by: e["metrics"][by]} for e in entries if by in e["metrics"]]
    rows = []
    target = bench.model
    for e in tqdm(entries, desc=f"screen {source.name}->{target.name}", unit="map"):
        key = MapKey.from_entry(e)
        maps = _maps_for(store, source, target, key, REPLACE)
        assert maps is not None  # the entry itself exists
        scores = bench.qa(translated_builder(source, target, REPLACE, maps), bench.items[:n_items])
        rows.append({**key.as_dict(), "f1": scores["f1"], "nll": scores["nll"]})
    return rows


def best_per_method(rows: list[dict[str, Any]], by: str) -> dict[str, dict[str, Any]]:
    """Each method's best screened row (the ranking rule of ``aligners.store.best_first``)."""
    best: dict[str, dict[str, Any]] = {}
    for _, row in best_first(by, [(row[by], row) for row in rows]):
        best.setdefault(row["method"], row)
    return best


def ratio(gap_from: float, value: float, gap_to: float) -> float:
    """Context benefit recovered: (none − value) / (none − native); NaN where reading the text changes nothing."""
    gap = gap_from - gap_to
    return (gap_from - value) / gap if gap else float("nan")


def score_modes(
    bench: Bench,
    store: MapStore,
    source: LoadedModel,
    best: dict[str, dict[str, Any]],
    base: dict[str, Any],
    config: EvalConfig,
) -> tuple[list[dict[str, Any]], dict[tuple[str, int], dict[str, float]]]:
    """Each method's best map in every mode, grid and snap weight of ``config``, beside the identity control of the
    same mode and layer: (rows, identity scores per (mode, layer))."""
    target = bench.model
    native_f1 = base["native"]["f1"]
    translated, identity = [], {}
    for _, row in tqdm(sorted(best.items()), desc=f"modes {source.name}->{target.name}", unit="method"):
        key = MapKey.from_entry(row)
        modes = config.handover_modes()
        for mode, grid, snap in [(m, g, w) for m in modes for g in config.grids for w in config.snap_rows()]:
            layer = mode.injects_at(key.target_layer)
            maps = _maps_for(store, source, target, key, mode)
            if maps is None:
                translated.append({**key.as_dict(), "mode": mode.name, "grid": grid, "missing": "maps not in store"})
                continue
            maps = [replace(m, snap_weight=snap) for m in maps]
            # last_token places its vector after every scored continuation token: its NLL would be the no-context
            # NLL by construction, so none is reported.
            with_nll = mode.scores_continuation
            builder = translated_builder(source, target, mode, maps, cast(Grid, grid))
            scores = bench.qa(builder, with_nll=with_nll)
            if bench.texts and with_nll:
                scores["text_nll"] = bench.text_nll(builder)
                scores["text_cbr"] = ratio(base["text"]["none"], scores["text_nll"], base["text"]["native"])
            identity[(mode.name, layer)] = bench.identity(mode, layer)
            translated.append(
                {
                    **key.as_dict(),
                    "mode": mode.name,
                    "grid": grid,
                    "snap": maps[-1].snap,
                    "layers": maps[-1].label,  # the map this mode used
                    **scores,
                    "cbr": ratio(base["none"]["nll"], scores["nll"], base["native"]["nll"]) if with_nll else None,
                    "pct_native": 100 * scores["f1"] / native_f1 if native_f1 else float("nan"),
                    "identity_f1": identity[(mode.name, layer)]["f1"],
                }
            )
    return translated, identity


def evaluate_direction(
    store: MapStore, source: LoadedModel, bench: Bench, config: EvalConfig, screen_by: str
) -> dict[str, Any]:
    """Baselines, screening and every mode for the best map of each method of one direction (``bench.model`` is
    the target)."""
    target = bench.model
    target_layers = config.target_layer_list()
    entries = [
        e
        for e in store.entries(source.name, target.name)
        if (target_layers is None or e["target_layer"] in target_layers)
        and not e.get("helper")
        and (config.methods is None or e["method"] in config.methods)
    ]
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    base = baselines(bench, source if config.source_answers else None)
    timings["baselines"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    screened = screen(bench, store, source, entries, screen_by, config.screen_items)
    timings["screen"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    translated, identity = score_modes(bench, store, source, best_per_method(screened, screen_by), base, config)
    timings["modes"] = time.perf_counter() - t0
    return {
        "source": source.name,
        "target": target.name,
        "n_items": len(bench.items),
        "chat": bool(bench.chat and target.tokenizer.chat_template),
        "baselines": base,
        "identity": [
            {
                "mode": m,
                "layer": layer,
                **s,
                "cbr": ratio(base["none"]["nll"], s["nll"], base["native"]["nll"]) if "nll" in s else None,
            }
            for (m, layer), s in identity.items()
        ],
        "screen": screened,
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
        + (
            f" The source ({b['source']['name']}) answering itself: F1 {b['source']['f1']:.1f} "
            f"(EM {b['source']['em']:.1f})."
            if "source" in b
            else ""
        )
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


@dataclass
class EvalReport:
    """What ``evaluate`` measured: one result per direction (baselines, identity controls, screening, every mode of
    each method's best map), written as ``eval-report.json``/``.md`` into ``out``."""

    results: list[dict[str, Any]]
    out: Path

    def markdown(self) -> str:
        return "\n".join(eval_markdown(r) for r in self.results)


def held_out_items(config: EvalConfig, calib: dict[str, Any]) -> list[Item]:
    """The QA items scored: ``config.data``'s, or the calibration data's items held out from calibration."""
    if config.data is None:
        items = read_items(calib["data"], seed=calib["seed"], builtin_size=calib["samples"] + calib["eval_samples"])
        _, held = split_items(items, calib["samples"], calib["eval_samples"], calib["seed"])
    else:
        held = [it for it in read_items(config.data, seed=config.seed) if it.has_qa]
    if not held:
        raise ValueError("no held-out QA items to evaluate on")
    return held[: config.samples]


def directions(config: EvalConfig, maps: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The (source, target) pairs of the store, or those ``config.pairs`` names (refusing any it lacks)."""
    pairs = sorted({(e["source"], e["target"]) for e in maps})
    if not config.pairs:
        return pairs
    wanted = {tuple(p.split("__", 1)) for p in config.pairs}
    unknown = sorted("__".join(p) for p in wanted - set(pairs))
    if unknown:
        raise ValueError(f"--pairs names {unknown}, not in the store; pairs: {['__'.join(p) for p in pairs]}")
    return [p for p in pairs if p in wanted]


def evaluate(config: EvalConfig) -> EvalReport:
    """Score the maps of ``config.maps`` on held-out items; write the report (and screening heatmaps) to ``out``."""
    store = MapStore(config.maps)
    manifest = store.manifest()
    calib = manifest.get("calibration")
    if not manifest["maps"] or calib is None:
        raise ValueError(f"{config.maps}: no fitted maps with calibration records (run `fit` first)")
    items = held_out_items(config, calib)
    texts = [it.context for it in read_items(config.text_data, seed=config.seed)] if config.text_data else []
    pairs = directions(config, manifest["maps"])

    def scored_by(metric: str) -> bool:
        return all(metric in e["metrics"] for e in manifest["maps"] if not e.get("helper"))

    screen_by = config.screen_by
    if screen_by == "auto":  # the proxy the fit ranked by, where it recorded one
        screen_by = next((m for m in ("proxy", "kl") if scored_by(m)), "f1")
    if screen_by != "f1" and not scored_by(screen_by):
        raise ValueError(
            f"--screen-by {screen_by} needs maps scored by that proxy (fit with --proxy-probes > 0"
            + (" and --proxy-data)" if screen_by == "kl_xsrc" else ")")
        )
    models = {
        name: load_model(info["spec"], name=name, dtype=config.dtype, device=config.device)
        for name, info in calib["models"].items()
    }
    params = SamplingParams(max_new_tokens=config.max_new_tokens)
    out = config.out or config.maps
    results = []
    for source_name, target_name in pairs:
        bench = Bench(models[target_name], items, params, config.batch_size, config.chat, texts[: config.text_samples])
        result = evaluate_direction(store, models[source_name], bench, config, screen_by)
        results.append(result)
        values: dict[tuple[tuple[int, ...], str], float] = {}
        for _, row in best_first(screen_by, [(row[screen_by], row) for row in result["screen"]]):
            values.setdefault((MapKey.from_entry(row).source_layers, row["method"]), row[screen_by])
        what = {
            "f1": "replace-mode F1",
            "kl": "proxy KL",
            "kl_xsrc": "proxy KL on another source",
            "proxy": "ranking proxy KL",
        }[screen_by]
        heatmap(
            values,
            f"{source_name} -> {target_name}: {what} (best target layer)",
            out / f"heatmap-{source_name}__{target_name}.png",
            "F1" if screen_by == "f1" else "KL",
        )
    out.mkdir(parents=True, exist_ok=True)
    report = EvalReport(results, out)
    (out / "eval-report.json").write_text(json.dumps(results, indent=1, default=float))
    (out / "eval-report.md").write_text(report.markdown())
    if screen_by == "f1":
        _record_screening(store, results, config.screen_items)
    return report


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
