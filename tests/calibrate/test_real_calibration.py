"""A small calibration on the real pair: smollm2 -> gemma3, one layer pair, then evaluation on held-out items."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from calibrate.cli import main
from service.runtime.loading import LoadedModel

pytestmark = [pytest.mark.real, pytest.mark.slow]


def test_small_real_pair_calibration(real_pair: dict[str, LoadedModel], tmp_path: Path) -> None:
    out, cache = tmp_path / "maps", tmp_path / "cache"
    fit = [
        "fit",
        "--source",
        "smollm2",
        "--target",
        "gemma3",
        "--samples",
        "48",
        "--eval-samples",
        "8",
        "--layers",
        "8",
        "--target-layers",
        "4",
        "--methods",
        "procrustes,affine",
        "--sampled",
        "0",
        "--directions",
        "forward",
        "--out",
        str(out),
        "--cache",
        str(cache),
    ]
    assert main(fit) == 0
    rows = json.loads((out / "fit-report.json").read_text())["rows"]
    by_method = {r["method"]: r for r in rows}
    # Least squares fits better than an orthogonal map on this pair (held-out R² 0.75-0.83 vs -0.1-0.35 measured),
    # and both beat chance retrieval by far.
    assert by_method["affine"]["r2"] > by_method["procrustes"]["r2"]
    assert by_method["affine"]["r2"] > 0.3
    assert by_method["affine"]["retrieval_at_1"] > 0.1
    assert main(["eval", "--maps", str(out), "--samples", "8", "--modes", "replace", "--cache", str(cache)]) == 0
    report = json.loads((out / "eval-report.json").read_text())[0]
    assert report["baselines"]["native"]["f1"] > report["baselines"]["alone"]["f1"]
    assert report["baselines"]["none"]["nll"] > report["baselines"]["native"]["nll"]
