"""Calibration from Python: ``fit(FitConfig)`` and ``evaluate(EvalConfig)`` on tiny models, the configs' checks, and
the CLI reading its defaults from the same configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aligners.store import best_first, same_map
from calibrate import ConfigError, EvalConfig, FitConfig, FitResult, evaluate, fit
from calibrate.cli import _config, build_parser
from calibrate.pipeline import train_config
from calibrate.trainer import TrainConfig


def tiny_fit(tiny_dirs: dict[str, Path], tmp_path: Path, **options: object) -> FitResult:
    """A quick forward fit between the tiny llama and gemma3 on 24 builtin passages."""
    base: dict[str, object] = {
        "out": tmp_path / "maps",
        "cache": tmp_path / "cache",
        "data": "builtin:fictional-qa",
        "samples": 24,
        "eval_samples": 8,
        "sampled": 0,
        "target_layers": "0,1",
        "methods": "linear,affine",
        "directions": "forward",
    }
    config = FitConfig(source=str(tiny_dirs["llama"]), target=str(tiny_dirs["gemma3"]), **(base | options))  # type: ignore[arg-type]
    return fit(config)


@pytest.mark.slow
def test_fit_and_evaluate_from_python(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    fitted = tiny_fit(tiny_dirs, tmp_path, layers="1", proxy_probes=0)
    assert {(r["method"], r["target_layer"]) for r in fitted.rows} == {
        (m, t) for m in ("linear", "affine") for t in (0, 1)
    }
    manifest = json.loads((fitted.store / "manifest.json").read_text())
    assert len(manifest["maps"]) == 4 and manifest["calibration"]["n_passages"] == 24
    assert "| llama -> gemma3 |" in fitted.markdown() and (fitted.store / "fit-report.md").exists()

    report = evaluate(
        EvalConfig(maps=fitted.store, samples=4, modes=("embeds", "replace"), screen_items=2, cache=tmp_path / "cache")
    )
    (result,) = report.results
    base = result["baselines"]
    # The source model reading the text and answering itself sits beside the target's own baselines.
    assert base["source"]["name"] == "llama" and base["source"]["n"] == 4.0 and 0 <= base["source"]["f1"] <= 100
    assert {r["mode"] for r in result["translated"]} == {"embeds", "replace"}
    assert "answering itself" in report.markdown()
    assert json.loads((fitted.store / "eval-report.json").read_text())[0]["source"] == "llama"


@pytest.mark.parametrize(
    "options,option,problem",
    [
        ({"samples": 0}, "samples", "must be >= 1"),
        ({"anchor": -1.0}, "anchor", "must be >= 0"),
        ({"ema": 1.0}, "ema", "must be in [0, 1)"),
        ({"lr": 0.0}, "lr", "must be > 0"),
        ({"methods": "linear,magic"}, "methods", "has unknown magic"),
        ({"methods": ""}, "methods", "names no method"),
        ({"probes": ("qa", "riddle")}, "probes", "has unknown riddle"),
        ({"layers": "8-x"}, "layers", "bad layer list"),
        ({"snap": "0,2"}, "snap", "takes comma-separated weights in [0, 1]"),
        ({"snap": (0.5, 1.5)}, "snap", "takes weights in [0, 1]"),
        ({"train_snap": "1"}, "train_snap", "takes 'auto' or a weight in [0, 1)"),
        ({"pairing": "middle"}, "pairing", "has unknown middle"),
        ({"dtype": "int8"}, "dtype", "has unknown int8"),
    ],
)
def test_fit_config_names_the_option_it_refuses(options: dict[str, object], option: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        FitConfig(source="a", target="b", **options)  # type: ignore[arg-type]
    assert err.value.option == option and problem in err.value.problem


@pytest.mark.parametrize(
    "options,option",
    [({"modes": "embeds,teleport"}, "modes"), ({"grids": "diagonal"}, "grids"), ({"batch_size": 0}, "batch_size")],
)
def test_eval_config_names_the_option_it_refuses(options: dict[str, object], option: str) -> None:
    with pytest.raises(ConfigError) as err:
        EvalConfig(maps="maps", **options)  # type: ignore[arg-type]
    assert err.value.option == option


def test_config_normalises_text_and_sequences_alike() -> None:
    text = FitConfig(source="a", target="b", methods="linear, distill", probes="qa,repeat", snap="0,0.5")
    seq = FitConfig(source="a", target="b", methods=["linear", "distill"], probes=("qa", "repeat"), snap=(0, 0.5))  # type: ignore[arg-type]
    assert text == seq
    assert text.source_groups() == [(2,), (4,), (0, 2), (0, 4)] and text.target_layer_list() is None


@pytest.mark.parametrize("command,cls", [("fit", FitConfig), ("eval", EvalConfig)])
def test_cli_defaults_are_the_configs_defaults(command: str, cls: type) -> None:
    """The CLI keeps no defaults of its own: flags left out give the config a caller gets in Python."""
    required = {"fit": ["--source", "a", "--target", "b"], "eval": ["--maps", "m"]}[command]
    args = build_parser().parse_args([command, *required])
    given = {"fit": {"source": "a", "target": "b"}, "eval": {"maps": "m"}}[command]
    assert _config(cls, args) == cls(**given)


def test_fit_trains_with_the_trainers_defaults_unless_told_otherwise() -> None:
    """A default ``fit`` trains as ``TrainConfig()`` does (step sizes per output dimension, going back to the best
    state with half the step size); ``--no-row-steps --backoff 1`` is the trainer before them, the one
    ``make hand-maps`` pins."""
    required = ["fit", "--source", "a", "--target", "b"]
    default = train_config(_config(FitConfig, build_parser().parse_args(required)))
    trainer = TrainConfig()
    assert (default.row_steps, default.backoff, default.ema) == (trainer.row_steps, trainer.backoff, trainer.ema)
    assert default.row_steps and default.backoff == 0.5
    old = train_config(_config(FitConfig, build_parser().parse_args([*required, "--no-row-steps", "--backoff", "1"])))
    assert (old.row_steps, old.backoff) == (False, 1.0)


def test_one_ranking_rule_puts_the_lowest_kl_and_the_highest_f1_first() -> None:
    assert [t for _, t in best_first("kl", [(0.3, "b"), (0.1, "a"), (0.3, "c")])] == ["a", "b", "c"]
    assert [t for _, t in best_first("f1", [(10.0, "b"), (40.0, "a"), (10.0, "c")])] == ["a", "b", "c"]


@pytest.mark.slow
def test_a_proxy_on_another_source_scores_every_map_and_can_rank_them(
    tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    fitted = tiny_fit(
        tiny_dirs,
        tmp_path,
        eval_samples=4,
        layers="1,2",
        proxy_probes=8,
        proxy_data="builtin:letters-qa",
        proxy_samples=10,
        rank_by="kl_xsrc",
        both_proxies=True,
    )
    assert all(r["kl_xsrc"] >= 0 and r["kl"] >= 0 for r in fitted.rows) and len(fitted.rows) == 8
    assert fitted.calibration["proxy_data"] == "builtin:letters-qa" and fitted.calibration["n_proxy_passages"] == 10
    assert "proxy KL, other source" in fitted.markdown()
    # The default map is the one the other source's proxy ranks first (the calibration text's may differ).
    manifest = json.loads((fitted.store / "manifest.json").read_text())
    best = min(manifest["maps"], key=lambda e: e["metrics"]["kl_xsrc"])
    default = manifest["defaults"]["llama__gemma3"]
    assert same_map(default, best) and default["by"] == "proxy"
    assert fitted.calibration["rank_by"] == "kl_xsrc" and all(r["proxy"] == r["kl_xsrc"] for r in fitted.rows)


def test_the_other_sources_passages_are_never_calibration_passages(tiny: dict[str, object]) -> None:
    from calibrate.pipeline import proxy_passages
    from calibrate.sources import read_items

    calib = read_items("builtin:fictional-qa", seed=0, builtin_size=40)
    config = FitConfig(source="a", target="b", proxy_data="builtin:fictional-qa", proxy_samples=30, probe_tokens=8)
    models = {"a": tiny["llama"], "b": tiny["gemma3"]}
    proxy = proxy_passages(config, models, calib)  # type: ignore[arg-type]
    assert proxy and not {it.context for it in proxy} & {it.context for it in calib}


def test_every_probe_of_the_other_source_is_held_out(tiny: dict[str, object], tmp_path: Path) -> None:
    from calibrate.probes import make_probes
    from calibrate.sources import read_items
    from calibrate.trainer import Through, TrainConfig

    target = tiny["gemma3"]
    items = read_items("builtin:letters-qa", seed=0)[:6]
    probes = make_probes(target, items, ["continuation", "repeat"], 8, per_passage=1)  # type: ignore[arg-type]
    through = Through.held_out(target, [it.context for it in items], probes, TrainConfig(heldout_probes=4), None)  # type: ignore[arg-type]
    assert through.train_idx == [] and len(through.held_idx) == 4 and set(through.held_idx) <= set(range(len(probes)))


def test_passages_the_models_make_are_named_in_the_data_spec_or_by_their_options() -> None:
    spec = FitConfig(source="a", target="b", data="builtin:fictional-qa, sampled:50,vocab:20")
    assert (spec.data, spec.sampled, spec.vocab) == ("builtin:fictional-qa", 50, 20)
    options = FitConfig(source="a", target="b", data="builtin:fictional-qa", sampled=50, vocab=20)
    assert (options.data, options.sampled, options.vocab) == (spec.data, spec.sampled, spec.vocab)
    assert (FitConfig(source="a", target="b").sampled, FitConfig(source="a", target="b").vocab) == (400, 0)
    only_made = FitConfig(source="a", target="b", data="sampled:100")
    assert (only_made.data, only_made.sampled) == ("", 100)
    with pytest.raises(ConfigError, match="given twice"):
        FitConfig(source="a", target="b", data="builtin:fictional-qa,sampled:50", sampled=10)
    with pytest.raises(ConfigError, match="takes a number"):
        FitConfig(source="a", target="b", data="vocab:many")
    with pytest.raises(ConfigError, match="no passages"):
        FitConfig(source="a", target="b", data="sampled:0")


def test_eval_data_cannot_name_passages_the_models_make() -> None:
    from calibrate.sources import DataError, read_items

    with pytest.raises(DataError, match="only for `fit`"):
        read_items("builtin:letters-qa,sampled:10")
