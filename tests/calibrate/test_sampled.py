"""Calibration text the models make themselves (samples they write, words of their vocabularies): trimmed like the
other prose sources, seeded, cached, and used by `fit`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from calibrate.cli import main
from calibrate.sources.prose import MAX_CHARS, MIN_CHARS
from calibrate.sources.sampled import sample_passages, trim
from service.runtime.loading import LoadedModel


def test_trim_ends_at_the_last_sentence_within_the_limit() -> None:
    sentence = "The mill by the river was built of stone. "
    text = sentence * 30  # far past MAX_CHARS
    out = trim(text)
    assert out is not None and MIN_CHARS <= len(out) <= MAX_CHARS and out.endswith("stone.")
    assert trim("Too short. " * 3) is None
    unbroken = "x" * (MAX_CHARS + 50)  # no sentence or line end: cut at the limit
    assert trim(unbroken) == "x" * MAX_CHARS


def test_samples_are_seeded_and_cached(tiny: dict[str, LoadedModel], tmp_path: Path) -> None:
    model = tiny["llama"]
    first = sample_passages(model, 4, seed=0, cache=tmp_path, batch_size=4)
    assert first, "a tiny model's 160-token samples should leave passages long enough to keep"
    assert all(MIN_CHARS <= len(it.context) <= MAX_CHARS and not it.has_qa for it in first)
    cached = list((tmp_path / "samples").glob("*.json"))
    assert len(cached) == 1 and len(json.loads(cached[0].read_text())) == 4
    again = sample_passages(model, 4, seed=0, cache=None, batch_size=4)  # recomputed, not read from the cache
    assert [it.context for it in again] == [it.context for it in first]
    other = sample_passages(model, 4, seed=1, cache=None, batch_size=4)
    assert [it.context for it in other] != [it.context for it in first]


@pytest.mark.slow
@pytest.mark.parametrize("option", ["sampled", "vocab"])
def test_fit_calibrates_on_text_the_models_make_too(tiny_dirs: dict[str, Path], tmp_path: Path, option: str) -> None:
    common = ["fit", "--source", str(tiny_dirs["llama"]), "--target", str(tiny_dirs["gemma3"]), "--samples", "12"]
    common += ["--eval-samples", "4", "--layers", "1", "--target-layers", "1", "--methods", "affine"]
    common += ["--directions", "forward", "--cache", str(tmp_path / "cache"), "--sampled", "0"]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert main([*common, f"--{option}", "4", "--out", str(tmp_path / "mixed")]) == 0
    plain = json.loads((tmp_path / "plain" / "manifest.json").read_text())["calibration"]
    mixed = json.loads((tmp_path / "mixed" / "manifest.json").read_text())["calibration"]
    assert plain[option] == 0 and mixed[option] == 4
    grown = mixed["n_passages"] - plain["n_passages"]
    # Sampled passages too short to keep are dropped; vocabulary passages are all kept (2 from each model).
    assert 0 < grown <= 4 and (option == "sampled" or grown == 4)


@pytest.mark.parametrize("option", ["sampled", "vocab"])
def test_negative_counts_are_refused(capsys: pytest.CaptureFixture[str], option: str) -> None:
    assert main(["fit", "--source", "smollm2", "--target", "gemma3", f"--{option}", "-1"]) == 2
    assert f"--{option} must be >= 0" in capsys.readouterr().err
