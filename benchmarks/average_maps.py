"""Average the parameters of maps trained from the same start (a uniform "soup"), to score the average with `eval`.

Every map must be of the same kind and shape (e.g. the `distill` maps of several `fit` runs that differ only in
training settings); each tensor of the output is the mean of the inputs' tensors, the metadata is the first map's
plus ``averaged_from``. The output store is a copy of the first map's store with that map replaced, so `eval --maps`
scores it as it would the original.

    python benchmarks/average_maps.py --out soup runA/smollm2__gemma3/L0+2-L0/distill.safetensors \\
        runB/smollm2__gemma3/L0+2-L0/distill.safetensors ...
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from aligners import load, save


def average(paths: list[Path], out: Path) -> list[float]:
    """Write the mean map of ``paths`` to ``out``; returns each input's weight distance from the mean (relative)."""
    maps = [load(p) for p in paths]
    first, meta = maps[0]
    tensors = [a.tensors or {} for a, _ in maps]
    if any(
        type(a) is not type(first) or t.keys() != tensors[0].keys() for (a, _), t in zip(maps, tensors, strict=True)
    ):
        raise SystemExit("maps of different kinds or tensors cannot be averaged")
    mean = {k: torch.stack([t[k].float() for t in tensors]).mean(0) for k in tensors[0]}
    w = mean["weight"]
    distances = [float((t["weight"].float() - w).norm() / w.norm()) for t in tensors]
    first.set_state(mean, first.d_src, first.d_tgt)
    save(first, out, {**meta, "averaged_from": [str(p) for p in paths]})
    return distances


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "maps", nargs="+", type=Path, help="map files in their stores (the first one's store is copied)"
    )
    parser.add_argument("--out", required=True, type=Path, help="new store folder")
    args = parser.parse_args()
    first = args.maps[0].resolve()
    store = next(p for p in first.parents if (p / "manifest.json").exists())
    shutil.copytree(store, args.out)
    distances = average(args.maps, args.out / first.relative_to(store))
    for path, d in zip(args.maps, distances, strict=True):
        print(f"{path}: ‖W − mean‖/‖mean‖ = {d:.4f}")
    print(f"wrote {args.out / first.relative_to(store)}")


if __name__ == "__main__":
    main()
