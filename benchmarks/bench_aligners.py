"""Fit time of each aligner kind on synthetic pairs, with scipy's orthogonal Procrustes timed in the same run.

    python benchmarks/bench_aligners.py                 # n = 100,000 pairs, 4096 -> 4096, float32 (several minutes)
    python benchmarks/bench_aligners.py --n 20000 --d 1024

Prints a Markdown table. "scipy" is ``scipy.linalg.orthogonal_procrustes`` on data already centred and normalised
(the call alone); "scipy + prep" adds that centring and normalisation in numpy, which ``Procrustes.fit`` includes.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable

import numpy as np
import scipy.linalg
import torch

from aligners import build


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def synthetic(n: int, d_src: int, d_tgt: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Anisotropic source states with a common offset; target = a random linear map of them plus noise."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, -1.5, d_src)
    x = torch.randn(n, d_src, generator=g) * scales + torch.randn(d_src, generator=g)
    w = torch.randn(d_tgt, d_src, generator=g) / d_src**0.5
    y = x @ w.T + 0.1 * torch.randn(n, d_tgt, generator=g)
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="paired samples (default 100000)")
    parser.add_argument("--d", type=int, default=4096, help="width of both sides (default 4096)")
    parser.add_argument("--kinds", default="procrustes,linear,affine,lora", help="comma-separated kinds to time")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    x, y = synthetic(args.n, args.d, args.d, args.seed)
    print(f"n={args.n} d={args.d}->{args.d} float32, torch {torch.__version__} ({torch.get_num_threads()} threads)")

    rows: list[tuple[str, float, str]] = []
    xa, ya = x.numpy(), y.numpy()

    def scipy_prep() -> tuple[np.ndarray, np.ndarray]:
        xc, yc = xa - xa.mean(axis=0), ya - ya.mean(axis=0)
        return xc / np.linalg.norm(xc), yc / np.linalg.norm(yc)

    t_prep = timed(scipy_prep)
    prepared = scipy_prep()
    t_scipy = timed(lambda: scipy.linalg.orthogonal_procrustes(*prepared))
    for kind in args.kinds.split(","):
        aligner = build(kind)
        seconds = timed(lambda aligner=aligner: aligner.fit(x, y))
        info = aligner.fit_info
        note = ", ".join(f"{k}={v:.3g}" for k, v in info.items() if k in ("lam", "epochs", "val_mse"))
        rows.append((kind, seconds, note))
        print(f"  {kind}: {seconds:.1f} s", flush=True)
    rows.append(("scipy orthogonal_procrustes", t_scipy, "the call alone, on prepared data"))
    rows.append(("scipy + prep", t_scipy + t_prep, "plus centring and normalisation in numpy"))

    print("\n| map | fit seconds | notes |\n|---|---:|---|")
    for name, seconds, note in rows:
        print(f"| {name} | {seconds:.1f} | {note} |")
    ours = dict((r[0], r[1]) for r in rows).get("procrustes")
    if ours is not None:
        print(f"\nProcrustes / scipy: {ours / t_scipy:.2f}x (call alone), {ours / (t_scipy + t_prep):.2f}x (with prep)")


if __name__ == "__main__":
    main()
