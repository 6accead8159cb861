"""One short training run through the target on several devices, side by side: do CPU and CUDA train alike?

Builds a tiny random pair from configs (``tests.tiny``: different vocabularies, no hub), then runs the real
``interlingua-calibrate fit`` once per device with the same seed, data and settings (least squares, then ``distill``
trained through the target), each with its own cache, so states, teacher and training all run on that device. Prints
per device the least-squares start's held-out KL, the trained map's (best held-out), the fit's seconds, how far each
device's trained KL lies from the first device's in units of the first device's training gain (start minus trained),
and the held-out KL at every evaluation step. Float32 throughout; GPU matrix products do not use TF32 unless asked.

    PYTHONPATH=. python benchmarks/distill_devices.py --devices cpu,cuda
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from calibrate.cli import main as calibrate
from tests.tiny import save_tiny


def run(devices: list[str], samples: int, epochs: float, root: Path) -> list[dict[str, Any]]:
    source = save_tiny(root / "llama", "llama", vocab_size=400, seed=0)
    target = save_tiny(root / "gemma3", "gemma3", vocab_size=500, seed=2)
    rows: list[dict[str, Any]] = []
    for device in devices:
        tag = device.replace(":", "-")
        out = root / f"maps-{tag}"
        args = ["fit", "--source", str(source), "--target", str(target), "--samples", str(samples)]
        args += ["--eval-samples", "8", "--layers", "2", "--target-layers", "0", "--methods", "linear,distill"]
        args += ["--directions", "forward", "--proxy-probes", "24", "--train-epochs", str(epochs)]
        args += ["--out", str(out), "--cache", str(root / f"cache-{tag}"), "--device", device]
        started = time.perf_counter()
        if calibrate(args) != 0:
            raise SystemExit(f"fit on {device} failed")
        seconds = time.perf_counter() - started
        curves = json.loads((out / "fit-report.json").read_text())["curves"]
        (curve,) = [c for name, c in curves.items() if name.endswith(" distill")]
        trained = min(c["heldout_kl"] for c in curve)
        rows.append({"device": device, "curve": curve, "kl": trained, "seconds": seconds})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default="cpu,cuda", help="comma-separated, first is the reference")
    parser.add_argument("--samples", type=int, default=120, help="calibration passages (default 120)")
    parser.add_argument("--epochs", type=float, default=3.0, help="training epochs (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = run([d.strip() for d in args.devices.split(",")], args.samples, args.epochs, Path(tmp))
    ref = rows[0]
    start = ref["curve"][0]["heldout_kl"]
    gain = start - ref["kl"]
    print(
        "| device | start KL (least squares) | trained KL (best held-out) | trained vs first device, in gains | fit s |"
    )
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        off = (r["kl"] - ref["kl"]) / gain if gain else float("nan")
        print(
            f"| {r['device']} | {r['curve'][0]['heldout_kl']:.5f} | {r['kl']:.5f} | {off:+.3f} | {r['seconds']:.1f} |"
        )
    print("\nheld-out KL by step:\n")
    print("| step | " + " | ".join(r["device"] for r in rows) + " |")
    print("|---:|" + "---:|" * len(rows))
    for points in zip(*(r["curve"] for r in rows), strict=False):
        print(f"| {points[0]['step']:.0f} | " + " | ".join(f"{p['heldout_kl']:.5f}" for p in points) + " |")


if __name__ == "__main__":
    main()
