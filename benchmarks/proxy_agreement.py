"""How well each label-free proxy of a fit orders its maps by what they are worth on held-out QA of another source.

For every map of one direction of a store (helpers left out), the held-out QA F1 of the mode the map serves
(``embeds`` into layer 0, ``replace`` deeper) on ``--samples`` items of ``--data``, beside the proxies the fit
recorded: ``kl`` (held-out probes of the calibration text) and ``kl_xsrc`` (probes on another source, ``fit
--proxy-data``; fit with ``--both-proxies`` so that every map has both). Prints the table and, per proxy,
Spearman's and Kendall's rank correlation of -KL with F1 (1: the proxy orders the maps as F1 does), over all maps and
within each way of entering the target.

    python benchmarks/proxy_agreement.py --maps STORE --pair smollm2__gemma3 --data builtin:letters-qa --samples 40
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from scipy.stats import kendalltau, spearmanr
from tqdm import tqdm

from aligners.store import MapKey, MapStore
from calibrate.evaluation import Bench, _maps_for, native_builder, translated_builder
from calibrate.sources import read_items
from service.runtime.generate import SamplingParams
from service.runtime.loading import load_model
from service.runtime.modes import default_mode

PROXIES = ("kl", "kl_xsrc")


def agreement(rows: list[dict[str, Any]], proxy: str) -> tuple[float, float, int]:
    """(Spearman, Kendall, n) of -proxy against F1 over the rows that have the proxy."""
    have = [r for r in rows if proxy in r]
    if len(have) < 3:
        return float("nan"), float("nan"), len(have)
    f1 = [r["f1"] for r in have]
    neg = [-r[proxy] for r in have]
    return float(spearmanr(neg, f1).statistic), float(kendalltau(neg, f1).statistic), len(have)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--maps", required=True, help="map store written by `fit`")
    parser.add_argument("--pair", required=True, help="source__target, e.g. smollm2__gemma3")
    parser.add_argument("--data", default="builtin:letters-qa", help="held-out QA of another source")
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--out", default=None, help="write the rows and correlations as JSON here")
    args = parser.parse_args()

    store = MapStore(args.maps)
    calib = store.manifest()["calibration"]
    source_name, target_name = args.pair.split("__", 1)
    models = {n: load_model(calib["models"][n]["spec"], name=n) for n in (source_name, target_name)}
    source, target = models[source_name], models[target_name]
    items = [it for it in read_items(args.data, seed=0) if it.has_qa][: args.samples]
    bench = Bench(target, items, SamplingParams(max_new_tokens=12), args.batch_size)
    native = bench.qa(native_builder(target), with_nll=False)["f1"]

    rows = []
    entries = [e for e in store.entries(source_name, target_name) if not e.get("helper")]
    for e in tqdm(entries, desc="maps", unit="map"):
        key = MapKey.from_entry(e)
        mode = default_mode(key.target_layer)
        maps = _maps_for(store, source, target, key, mode)
        assert maps is not None
        f1 = bench.qa(translated_builder(source, target, mode, maps), with_nll=False)["f1"]
        rows.append(
            {
                "map": f"{key.layers_label} {key.method}",
                "mode": mode.name,
                "f1": f1,
                **{p: e["metrics"][p] for p in PROXIES if p in e["metrics"]},
            }
        )

    print(f"{args.pair}, {len(items)} items of {args.data}, native F1 {native:.1f}\n")
    print("| map | mode | F1 | proxy KL (calibration text) | proxy KL (other source) |")
    print("|---|---|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: -r["f1"]):
        cells = " | ".join(f"{r[p]:.3f}" if p in r else "" for p in PROXIES)
        print(f"| {r['map']} | {r['mode']} | {r['f1']:.1f} | {cells} |")
    print("\n| proxy | maps | Spearman (all) | Kendall (all) | Spearman embeds | Spearman replace |")
    print("|---|---:|---:|---:|---:|---:|")
    result: dict[str, Any] = {"native_f1": native, "rows": rows, "agreement": {}}
    for p in PROXIES:
        rho, tau, n = agreement(rows, p)
        by_mode = [agreement([r for r in rows if r["mode"] == m], p)[0] for m in ("embeds", "replace")]
        result["agreement"][p] = {"spearman": rho, "kendall": tau, "n": n, "spearman_by_mode": by_mode}
        print(f"| {p} | {n} | {rho:.2f} | {tau:.2f} | {by_mode[0]:.2f} | {by_mode[1]:.2f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
