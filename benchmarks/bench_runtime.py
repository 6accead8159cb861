"""Latency of translated generation (encode with the source + map + generate in the target) against the target's
native generation of the same text and output length, measured side by side in one run.

    python benchmarks/bench_runtime.py                      # smollm2 -> gemma3, replace at L8 -> L4
    python benchmarks/bench_runtime.py --mode full --repeats 5

Latency does not depend on the map's values, so the map here is an affine map of the right shape fitted to random
data; every run generates exactly --new-tokens tokens (EOS ignored). Prints a Markdown table of medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from aligners import build
from aligners.store import matching_layer
from service.runtime.generate import SamplingParams, stream_batch
from service.runtime.handover import LayerMap, prepare
from service.runtime.loading import LoadedModel, load_model
from service.runtime.modes import HANDOVER_MODES

CONTEXT = (
    "Ysolde Marrow founded the Quillmere Lighthouse Company in 1874, three years after the harbor of Quillmere was "
    "rebuilt in stone. Her partner, Corin Aske, designed the first lamp, which burned whale oil until 1903, when the "
    "company switched to kerosene. In 1921 the lighthouse was sold to the town council of Varnhollow for 4,200 "
    "crowns, and the company moved its offices to Oskelby, where it built ferries until it closed in 1956."
)
QUESTION = "\nQuestion: Who designed the first lamp?\nAnswer:"


def random_map(d_src: int, d_tgt: int, seed: int) -> object:
    g = torch.Generator().manual_seed(seed)
    return build("affine", lam=1.0).fit(torch.randn(256, d_src, generator=g), torch.randn(256, d_tgt, generator=g))


def run_once(source: LoadedModel, target: LoadedModel, mode: str, maps: list[LayerMap], new_tokens: int) -> dict:
    t0 = time.perf_counter()
    handover = prepare(source, target, CONTEXT, QUESTION, mode, maps)
    t1 = time.perf_counter()
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    first = None
    count = 0
    for _event in stream_batch(target, [handover.prompt], [params]):
        count += 1
        if first is None:
            first = time.perf_counter()
    t2 = time.perf_counter()
    assert first is not None and count == new_tokens
    return {
        "encode": handover.timings_ms["encode"],
        "project": handover.timings_ms["project"],
        "prepare": (t1 - t0) * 1e3,
        "prefill": (first - t1) * 1e3,
        "decode": (t2 - first) * 1e3,
        "total": (t2 - t0) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="smollm2")
    parser.add_argument("--target", default="gemma3")
    parser.add_argument("--mode", default="replace", choices=HANDOVER_MODES)
    parser.add_argument("--source-layer", type=int, default=8)
    parser.add_argument("--target-layer", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    source, target = load_model(args.source, name=args.source), load_model(args.target, name=args.target)
    d_src, d_tgt = source.hidden_size, target.hidden_size
    layer = 0 if args.mode == "embeds" else args.target_layer
    if args.mode == "full":
        maps = [
            LayerMap(matching_layer(k, target.n_layers, source.n_layers), k, random_map(d_src, d_tgt, k))
            for k in range(layer + 1)
        ]
    else:
        maps = [LayerMap(args.source_layer, layer, random_map(d_src, d_tgt, 0))]
    runs: dict[str, list[dict]] = {"native": [], args.mode: []}
    run_once(source, target, "native", [], 2)  # warm-up
    run_once(source, target, args.mode, maps, 2)
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        runs["native"].append(run_once(source, target, "native", [], args.new_tokens))
        runs[args.mode].append(run_once(source, target, args.mode, maps, args.new_tokens))

    print(
        f"{args.source} -> {args.target}, {args.mode} L{args.source_layer}->L{layer}, {args.new_tokens} new tokens, "
        f"median of {args.repeats}, {torch.get_num_threads()} threads, float32"
    )
    cols = ["encode", "project", "prefill", "decode", "total"]
    print("\n| mode | " + " | ".join(f"{c} ms" for c in cols) + " |\n|---|" + "---:|" * len(cols))
    med = {m: {c: statistics.median(r[c] for r in rs) for c in cols} for m, rs in runs.items()}
    for m in runs:
        print(f"| {m} | " + " | ".join(f"{med[m][c]:.1f}" for c in cols) + " |")
    print(f"\ntranslated / native total latency: {med[args.mode]['total'] / med['native']['total']:.2f}x")


if __name__ == "__main__":
    main()
