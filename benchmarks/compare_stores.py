"""Several map stores side by side, each as the server would serve it, on the same held-out items in one run.

For each store and each mode: the maps the server picks for the pair (``aligners.resolve.choose`` with the store's
default map, as ``/generate`` does with no map named), QA EM/F1 on ``--samples`` items of ``--data`` (a source none
of the stores was calibrated on), % of native F1, QA-context CBR and plain-text CBR on ``--text-samples`` passages
of ``--text-data``; the baselines (native, question alone, the source model answering itself) once, for every row;
and each row's identity control (the target handing its own states to itself in the same mode and layer: what the
mode itself costs, whatever the map). With several stores, each mode's F1 difference from the first store's map,
paired over the same items, with a 95% bootstrap interval (``calibrate.scoring.paired_difference``): an interval that
holds 0 says these items do not tell the two maps apart.

    python benchmarks/compare_stores.py --maps new=/tmp/maps --maps shipped=service/default_maps \
        --pair smollm2__gemma3 --data builtin:letters-qa --text-data builtin:stdlib-docs --samples 40
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from aligners.resolve import choose
from aligners.store import MapNotFoundError, MapStore
from calibrate.evaluation import Bench, _maps_for, baselines, ratio, translated_builder
from calibrate.scoring import paired_difference
from calibrate.sources import read_items
from service.runtime.generate import SamplingParams
from service.runtime.loading import load_model
from service.runtime.modes import get_mode, parse_handover_modes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--maps", action="append", required=True, help="LABEL=STORE, once per store")
    parser.add_argument("--pair", required=True, help="source__target, e.g. smollm2__gemma3")
    parser.add_argument("--data", default="builtin:letters-qa", help="held-out QA of another source")
    parser.add_argument("--text-data", default="builtin:stdlib-docs", help="held-out plain text")
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--text-samples", type=int, default=30)
    parser.add_argument("--modes", default="embeds,replace,full")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args()

    stores = {label: MapStore(path) for label, _, path in (m.partition("=") for m in args.maps)}
    source_name, target_name = args.pair.split("__", 1)
    calib = next(iter(stores.values())).manifest()["calibration"]
    source, target = (load_model(calib["models"][n]["spec"], name=n) for n in (source_name, target_name))
    items = [it for it in read_items(args.data, seed=0) if it.has_qa][: args.samples]
    texts = [it.context for it in read_items(args.text_data, seed=0)][: args.text_samples]
    bench = Bench(target, items, SamplingParams(max_new_tokens=12), args.batch_size, texts=texts)
    base = baselines(bench, source)  # with the source answering itself: what asking A gives
    native = base["native"]

    rows: list[dict[str, Any]] = []
    for label, store in stores.items():
        default = store.manifest().get("defaults", {}).get(args.pair)
        for mode in map(get_mode, parse_handover_modes(args.modes)):
            try:
                key, _ = choose(store.entries(), source_name, target_name, mode.need, default=default)
            except MapNotFoundError as err:
                print(f"{label} {mode.name}: {err}", file=sys.stderr)
                continue
            maps = _maps_for(store, source, target, key, mode)
            assert maps is not None
            builder = translated_builder(source, target, mode, maps)
            scores, f1_items = bench.qa_per_item(builder)
            text_nll = bench.text_nll(builder)
            snap = maps[-1].aligner.fit_info.get("snap", 0.0) if key.target_layer == 0 else None
            rows.append(
                {
                    "store": label,
                    "mode": mode.name,
                    "map": f"{key.layers_label} {key.method}" + (f", snap {snap:g}" if snap is not None else ""),
                    "em": scores["em"],
                    "f1": scores["f1"],
                    "of_native": scores["f1"] / native["f1"] if native["f1"] else float("nan"),
                    "identity_f1": bench.identity(mode, mode.injects_at(key.target_layer))["f1"],
                    "qa_cbr": ratio(base["none"]["nll"], scores["nll"], native["nll"]),
                    "text_cbr": ratio(base["text"]["none"], text_nll, base["text"]["native"]),
                    "f1_items": f1_items,
                }
            )

    print(
        f"{args.pair}, {len(items)} items of {args.data} (native EM {native['em']:.1f}, F1 {native['f1']:.1f}; "
        f"question alone F1 {base['alone']['f1']:.1f}; {source_name} answering itself: EM {base['source']['em']:.1f}, "
        f"F1 {base['source']['f1']:.1f}), {len(texts)} passages of {args.text_data}\n"
    )
    print("| store | mode | map | EM | F1 | % of native | identity control F1 | QA-context CBR | plain-text CBR |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['store']} | {r['mode']} | {r['map']} | {r['em']:.1f} | {r['f1']:.1f} | {100 * r['of_native']:.0f}% "
            f"| {r['identity_f1']:.1f} | {r['qa_cbr']:.2f} | {r['text_cbr']:.2f} |"
        )
    first = next(iter(stores))
    firsts = {r["mode"]: r for r in rows if r["store"] == first}
    for r in rows:
        ref = firsts.get(r["mode"])
        if r["store"] != first and ref is not None:
            mean, low, high = paired_difference(ref["f1_items"], r["f1_items"])
            r["f1_vs_first"] = {"store": first, "mean": mean, "low": low, "high": high}
            print(
                f"{r['mode']}: {r['store']} − {first} F1 {mean:+.1f} (95% interval {low:+.1f} to {high:+.1f}, paired "
                f"bootstrap over {len(items)} items)"
            )
    if args.out:
        Path(args.out).write_text(json.dumps({"baselines": base, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
