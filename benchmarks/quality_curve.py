"""Quality against calibration size: F1 (% of native) and continuation CBR per method, one point per run.

Each run is a map store fitted on N passages and evaluated with ``interlingua-calibrate eval`` (its eval-report.json);
the runs must share direction, mode and evaluation data. The commands of the committed curve are in
docs/results/translation-quality.md.

    python benchmarks/data_size_curve.py --run 100=/tmp/size-100 --run 300=/tmp/size-300 --run 1000=/tmp/size-1000 \\
        --mode embeds --out docs/results/quality/data-size.png

Prints a Markdown table and writes the PNG.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, help="X=FOLDER with an eval-report.json")
    parser.add_argument("--x", default="calibration passages", help="what X is (the axis label)")
    parser.add_argument("--log", action="store_true", help="logarithmic x axis")
    parser.add_argument("--methods", help="only these methods (comma-separated)")
    parser.add_argument("--mode", default="embeds")
    parser.add_argument(
        "--start",
        help="a method whose score in the first run is the untrained point (x = 0) of the others: for a curve against "
        "training steps, the least-squares start (linear) of a distill map",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows: dict[str, list[tuple[int, float, float, float]]] = {}
    native = None
    for spec in args.run:
        n, folder = spec.split("=", 1)
        (report,) = json.loads((Path(folder) / "eval-report.json").read_text())
        native = report["baselines"]["native"]["f1"]
        wanted = set(args.methods.split(",")) | {args.start} if args.methods else None
        for r in report["translated"]:
            if r["mode"] == args.mode and r.get("grid", "source") == "source" and (not wanted or r["method"] in wanted):
                rows.setdefault(f"{r['method']} {r['layers']}", []).append(
                    (int(n), r["pct_native"], r["cbr"], r.get("text_cbr", float("nan")))
                )
    if args.start:
        start = sorted(rows.pop(next(k for k in rows if k.startswith(f"{args.start} "))))[0]
        for name in rows:
            rows[name].append((0, *start[1:]))
    print(f"native F1 {native:.1f}; mode {args.mode}\n")
    print(f"| method | {args.x} | F1 % of native | CBR | text CBR |\n|---|---:|---:|---:|---:|")
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for name, points in sorted(rows.items()):
        points.sort()
        for n, pct, cbr, text in points:
            print(f"| {name} | {n} | {pct:.0f}% | {cbr:.2f} | {text:.2f} |")
        xs = [p[0] for p in points]
        titles = ("F1, % of native", "CBR (QA continuation)", "CBR (plain text)")
        for ax, k, label in zip(axes, (1, 2, 3), titles, strict=True):
            ax.plot(xs, [p[k] for p in points], marker="o", label=name)
            if args.log:
                ax.set_xscale("log")
            ax.set_xlabel(args.x)
            ax.set_title(label)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Quality against {args.x} ({args.mode})")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
