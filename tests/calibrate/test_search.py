"""What ``fit`` chooses by itself: source layers, pairing and training recipe, by the ranking proxy, within a budget.

Planted relations on tiny models: a model handed its own states must be found to need its own layer (layer 0 into the
embeddings, layer 2 into layer 2); the pairing kept is the one an explicit fit of each scores best; the recipe kept is
the pilot the proxy scores best; fixing the recipe runs no pilot, nor does a budget too small for pilots to move a map
off its start.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from aligners import load
from aligners.store import MapStore
from calibrate import FitConfig, fit
from calibrate.search import (
    ANCHORS,
    LR_RELS,
    PILOT_MIN_EVALS,
    Budget,
    Recipe,
    anchor_recipes,
    n_pilots,
    pilots_fit,
    step_size_recipes,
    unpiloted_recipe,
)
from calibrate.sources import read_items
from calibrate.trainer import Through


def _fit(tiny_dirs: dict[str, Path], tmp_path: Path, source: str, target: str, **options: Any) -> Any:
    base: dict[str, Any] = {
        "out": tmp_path / "maps",
        "cache": tmp_path / "cache",
        "data": "builtin:fictional-qa",
        "samples": 32,
        "eval_samples": 4,
        "sampled": 0,
        "directions": "forward",
        "proxy_probes": 8,
        "proxy_samples": 8,
        "train_epochs": 0.5,
        "budget": 5.0,
    }
    return fit(FitConfig(source=str(tiny_dirs[source]), target=str(tiny_dirs[target]), **(base | options)))


def test_the_recipes_tried_are_step_sizes_then_anchors_unless_fixed() -> None:
    first = step_size_recipes(None, None, None)
    assert [r.lr_rel for r in first] == list(LR_RELS) and {r.anchor for r in first} == {0.0}
    assert [r.anchor for r in anchor_recipes(first[1], None)] == [a for a in ANCHORS if a != 0.0]
    assert n_pilots(None, None, None) == len(LR_RELS) + len(ANCHORS) - 1
    assert step_size_recipes(None, None, 0.02) == [Recipe(0.02, 0.0)]  # a fixed relative step size neither
    assert step_size_recipes(1e-3, None, 0.015) == [Recipe(0.015, 0.0, 1e-3)]  # a fixed step size is not searched
    assert anchor_recipes(Recipe(0.015, 0.0), 5.0) == []  # nor a fixed anchor
    assert n_pilots(1e-3, 5.0, 0.015) == 0
    # Without pilots: the first step size, held nearest its start, unless either is fixed.
    assert unpiloted_recipe(None, None, None) == Recipe(LR_RELS[0], max(ANCHORS))
    assert unpiloted_recipe(1e-3, 0.0, None) == Recipe(LR_RELS[0], 0.0, 1e-3)


def test_a_pilot_must_last_the_held_out_evaluations_that_can_tell_it_from_its_start() -> None:
    steps = PILOT_MIN_EVALS * 50
    assert pilots_fit(steps * 2.0, 2.0, 50) and not pilots_fit(steps * 2.0 - 1, 2.0, 50)


def test_the_budget_adds_up_its_phases() -> None:
    budget = Budget(1.0, "a->b")
    with budget.phase("screening"):
        pass
    with budget.phase("screening"):
        pass
    assert set(budget.spent) == {"screening"} and 0 <= budget.spent["screening"] < 1
    assert 59 < budget.left_s() <= 60 and budget.close().startswith("budget a->b: 0.0 of 1 min")


def test_the_default_proxy_source_is_neither_calibration_nor_evaluation_text() -> None:
    proxy = {it.context for it in read_items(FitConfig(source="a", target="b").proxy_data or "", builtin_size=10**4)}
    others = read_items("builtin:stdlib-docs,builtin:python-docs,builtin:fictional-qa,builtin:letters-qa", 0, 10**4)
    assert len(proxy) > 100 and not proxy & {it.context for it in others}


@pytest.mark.slow
def test_a_model_handed_its_own_states_is_found_to_need_its_own_layer(
    tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """Planted: the target is the source, so its own layer is the identity map (layer 0 into the embeddings, layer 2
    into layer 2) and the other layer of each pair is not; the search must train exactly those two starts."""
    # A budget large enough that pilots run however slow a step is on a busy machine (each still ends at its epoch).
    options: dict[str, Any] = {"layers": "0,2", "target_layers": "0,2", "methods": "linear,distill", "budget": 240.0}
    result = _fit(tiny_dirs, tmp_path, "llama", "llama", **options)
    trained = {(r["source_layer"], r["target_layer"]) for r in result.rows if r["method"] == "distill"}
    assert trained == {(0, 0), (2, 2)}
    linear = {(r["source_layer"], r["target_layer"]): r["proxy"] for r in result.rows if r["method"] == "linear"}
    # Into the embeddings the identity is exact; into layer 2 (`replace`) the probe's lower blocks never see the
    # passage, so not even the identity is exact, but it still beats a map from the embeddings.
    assert linear[(0, 0)] < 0.01 < linear[(2, 0)] and linear[(2, 2)] < linear[(0, 2)]
    # The pilots: every recipe tried on each start, the one kept is the one the proxy scored best.
    for name, tried in result.search.items():
        assert len(tried) == n_pilots(None, None, None)
        best = min(tried, key=lambda t: t["proxy"])
        row = next(
            r
            for r in result.rows
            if r["method"] == "distill" and name.endswith(f"{r['source_layer']}->L{r['target_layer']} distill")
        )
        assert row["recipe"] == Recipe(best["lr_rel"], best["anchor"], best["lr"]).label
    assert "| pilot steps |" in result.markdown() and any(k.startswith("pilots ") for k in result.timings_s)


@pytest.mark.slow
def test_auto_pairing_keeps_the_pairing_an_explicit_fit_of_each_scores_best(
    tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    options: dict[str, Any] = {"layers": "1", "target_layers": "0", "methods": "linear", "snap": "0"}
    auto = _fit(tiny_dirs, tmp_path / "auto", "llama", "gemma3", **options)
    (row,) = auto.rows
    explicit = {
        pairing: _fit(tiny_dirs, tmp_path / pairing, "llama", "gemma3", pairing=pairing, **options)
        for pairing in ("end", "span")
    }
    scores = {pairing: result.rows[0]["proxy"] for pairing, result in explicit.items()}
    assert scores["end"] != scores["span"]  # the tokenizers differ: the two pairings are two maps
    kept = min(scores, key=lambda p: scores[p])
    assert row["pairing"] == kept and row["proxy"] == pytest.approx(scores[kept], rel=1e-5)
    assert row["proxy_end_pairing"] == pytest.approx(scores["end"], rel=1e-5)
    key = MapStore(auto.store).entries()[0]["path"]
    ours, theirs = (load(r.store / key)[0] for r in (auto, explicit[kept]))
    x = torch.randn(3, ours.d_src, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ours.transform(x), theirs.transform(x))


@pytest.mark.slow
def test_a_fixed_recipe_runs_no_pilot_and_trains_with_it(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    result = _fit(
        tiny_dirs,
        tmp_path,
        "llama",
        "gemma3",
        layers="1",
        target_layers="1",
        methods="linear,distill",
        lr=1e-3,
        anchor=5.0,
        train_minutes=0.5,
    )
    assert all(not tried for tried in result.search.values())
    manifest = json.loads((result.store / "manifest.json").read_text())
    (trained,) = [e for e in manifest["maps"] if e["method"] == "distill"]
    meta = load(result.store / trained["path"])[1]
    assert meta["train"]["recipe"] == {"lr_rel": 0.015, "anchor": 5.0, "lr": 1e-3} and meta["pilots"] == []


@pytest.mark.slow
def test_pilots_too_short_to_tell_recipes_apart_are_not_run(
    tiny_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step time is measured for real and then scaled as if on hardware 10^6 times slower: a pilot could not
    reach its held-out evaluations, so none runs and the unsearched recipe trains for all the time, as the report
    says."""
    measured: list[float] = []
    real = Through.step_seconds

    def slow(self: Through, *args: Any, **kwargs: Any) -> float:
        measured.append(real(self, *args, **kwargs))
        return measured[-1] * 1e6

    monkeypatch.setattr(Through, "step_seconds", slow)
    result = _fit(tiny_dirs, tmp_path, "llama", "gemma3", layers="1", target_layers="1", methods="linear,distill")
    assert len(measured) == 1 and 0 < measured[0] < 60
    assert all(not tried for tried in result.search.values())
    (row,) = [r for r in result.rows if r["method"] == "distill"]
    assert row["recipe"] == unpiloted_recipe(None, None, None).label
    assert "no pilots: each would train" in result.markdown() and "| pilot steps |" not in result.markdown()


@pytest.mark.slow
def test_a_trained_deeper_map_carries_the_trained_map_into_the_embeddings_as_its_readout(
    tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """The map into layer 1 gets the trained map into layer 0 from the same source layer as its readout, and the
    snap weight the ranking proxy scores lowest with it (0, no snap, among the candidates: never worse than none)."""
    result = _fit(
        tiny_dirs, tmp_path, "llama", "gemma3", layers="1", target_layers="0,1", methods="linear,distill", lr=1e-3
    )
    entries = {(e["target_layer"], e["method"]): e for e in MapStore(result.store).entries()}
    into_embeddings = load(result.store / entries[(0, "distill")]["path"])[0]
    deeper = load(result.store / entries[(1, "distill")]["path"])[0]
    assert deeper.readout is not None and into_embeddings.readout is None
    weight, bias = into_embeddings.affine_on(torch.device("cpu"), torch.float32)
    assert torch.equal(deeper.readout[0], weight) and torch.equal(deeper.readout[1], bias)
    assert load(result.store / entries[(1, "linear")]["path"])[0].readout is None  # only trained maps carry one
    metrics = entries[(1, "distill")]["metrics"]
    assert deeper.fit_info["snap"] == metrics["snap"] and metrics["snap"] in (0.0, 0.25, 0.5, 0.75)
    assert metrics["proxy"] <= metrics["proxy_no_snap"]
