"""The calibration CLI end to end on tiny models: fit -> map files, manifest, report -> eval with every baseline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aligners import load
from aligners.store import MapKey, MapMismatchError, MapStore
from calibrate.cli import main
from calibrate.layers import parse_layer_groups
from calibrate.sweep import layer_pairs
from service.runtime.loading import LoadedModel
from service.runtime.modes import get_mode

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fitted(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    root = tmp_path_factory.mktemp("calib")
    out, cache = root / "maps", root / "cache"
    args = [
        "fit",
        "--source",
        str(tiny_dirs["llama"]),
        "--target",
        str(tiny_dirs["gemma3"]),
        "--samples",
        "24",
        "--eval-samples",
        "8",
        "--layers",
        "1-2",
        "--target-layers",
        "0,1",
        "--methods",
        "procrustes,affine,lora",
        "--data",
        "builtin:fictional-qa",
        "--sampled",
        "0",
        "--full",
        "--out",
        str(out),
        "--cache",
        str(cache),
    ]
    assert main(args) == 0
    return out, cache, args


def test_fit_writes_maps_with_metadata_and_manifest(fitted: tuple[Path, Path, list[str]]) -> None:
    out, _, _ = fitted
    manifest = json.loads((out / "manifest.json").read_text())
    keys = {(e["source"], e["target"], e["source_layer"], e["target_layer"], e["method"]) for e in manifest["maps"]}
    for direction in (("llama", "gemma3"), ("gemma3", "llama")):
        for ls in (1, 2):
            for lt in (0, 1):
                for method in ("procrustes", "affine", "lora"):
                    assert (*direction, ls, lt, method) in keys
    path = out / "llama__gemma3" / "L2-L1" / "affine.safetensors"
    aligner, meta = load(path)
    assert (aligner.d_src, aligner.d_tgt) == (128, 128)
    assert meta["source"] == "llama" and meta["target"] == "gemma3" and meta["source_layer"] == 2
    assert meta["data"] == "builtin:fictional-qa" and meta["n_passages"] == 24
    assert len(meta["source_fingerprint"]) == 16 and meta["source_fingerprint"] != meta["target_fingerprint"]
    assert {"r2", "cosine", "mean_baseline_cosine", "retrieval_at_1"} <= set(meta["metrics"])
    assert set(manifest["defaults"]) == {"llama__gemma3", "gemma3__llama"}
    # 2 source x 2 target layers, plus the L0->L0 map --full adds for target layer 0, x 3 methods.
    assert (out / "fit-report.md").read_text().count("| llama -> gemma3 |") == 15
    assert manifest["calibration"]["n_passages"] == 24


def test_same_seed_same_maps(fitted: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    out, _, args = fitted
    again = tmp_path / "again"
    args = [
        *args[: args.index("--out")],
        "--out",
        str(again),
        "--cache",
        str(tmp_path / "cache2"),
        "--directions",
        "forward",
        "--methods",
        "affine,lora",
    ]
    assert main(args) == 0
    for method in ("affine", "lora"):
        a, _ = load(out / "llama__gemma3" / "L1-L0" / f"{method}.safetensors")
        b, _ = load(again / "llama__gemma3" / "L1-L0" / f"{method}.safetensors")
        assert a.tensors is not None and b.tensors is not None
        for name in a.tensors:
            assert torch.equal(a.tensors[name], b.tensors[name]), (method, name)


def test_map_for_another_model_is_refused(fitted: tuple[Path, Path, list[str]]) -> None:
    out, _, _ = fitted
    store = MapStore(out)
    entry = store.entries("llama", "gemma3")[0]
    key = MapKey("llama", "gemma3", entry["source_layer"], entry["target_layer"], entry["method"])
    store.load(key, entry["source_fingerprint"], entry["target_fingerprint"])
    with pytest.raises(MapMismatchError, match="fingerprint.*refit"):
        store.load(key, "0" * 16, entry["target_fingerprint"])


def test_eval_reports_every_baseline(fitted: tuple[Path, Path, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    out, cache, _ = fitted
    argv = ["eval", "--maps", str(out), "--samples", "6", "--max-new-tokens", "3", "--cache", str(cache)]
    assert main([*argv, "--screen-by", "f1"]) == 0
    report = json.loads((out / "eval-report.json").read_text())
    assert {(r["source"], r["target"]) for r in report} == {("llama", "gemma3"), ("gemma3", "llama")}
    for r in report:
        assert {"native", "alone", "none"} <= set(r["baselines"])
        assert r["n_items"] == 6
        modes = {t["mode"] for t in r["translated"]}
        assert modes == {"replace", "full", "last_token", "embeds"}
        assert {t["method"] for t in r["translated"]} == {"procrustes", "affine", "lora"}
        assert {i["mode"] for i in r["identity"]} == modes
        assert all("f1" in t and "identity_f1" in t for t in r["translated"])
        for t in r["translated"]:
            if t["mode"] == "embeds":
                assert t["layers"].endswith("->L0")
            # last_token's vector comes after every scored continuation token: no NLL to report.
            assert ("nll" in t) == (t["mode"] != "last_token")
            assert (t["cbr"] is None) == (t["mode"] == "last_token")
        assert len(r["screen"]) == 12  # 4 layer pairs x 3 methods; the helper maps L0->L0 are never screened
    assert (out / "heatmap-llama__gemma3.png").stat().st_size > 1000
    manifest = json.loads((out / "manifest.json").read_text())
    for r in report:
        pair = manifest["defaults"][f"{r['source']}__{r['target']}"]
        # A new default only where screening told the maps apart; when every map ties, the fit's default stays.
        assert (pair["by"] == "f1") == (len({s["f1"] for s in r["screen"]}) > 1)
    assert "Native F1" in capsys.readouterr().out


def test_eval_by_proxy_with_plain_text_cbr(fitted: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    """Without screening runs (maps chosen by the proxy the fit ranked by), on QA from another generator plus plain
    text."""
    out, cache, _ = fitted
    argv = ["eval", "--maps", str(out), "--samples", "4", "--max-new-tokens", "3", "--cache", str(cache)]
    argv += ["--data", "builtin:letters-qa", "--text-data", "builtin:stdlib-docs", "--text-samples", "3"]
    argv += ["--modes", "replace,embeds", "--pairs", "llama__gemma3", "--out", str(tmp_path)]
    before = json.loads((out / "manifest.json").read_text())["defaults"]
    assert main(argv) == 0
    (r,) = json.loads((tmp_path / "eval-report.json").read_text())
    assert (r["source"], r["target"]) == ("llama", "gemma3")
    assert r["baselines"]["text"]["n"] == 3
    assert all("proxy" in s and "f1" not in s for s in r["screen"])
    entries = MapStore(out).entries("llama", "gemma3")
    for t in r["translated"]:
        assert isinstance(t["text_cbr"], float)
        kls = [e["metrics"]["proxy"] for e in entries if e["method"] == t["method"] and not e.get("helper")]
        chosen = next(s for s in r["screen"] if s["method"] == t["method"] and s["proxy"] == min(kls))
        if t["mode"] == "replace":
            assert t["layers"] == f"L{chosen['source_layer']}->L{chosen['target_layer']}"
    assert json.loads((out / "manifest.json").read_text())["defaults"] == before  # proxy screening rewrites nothing


def test_list_and_show(fitted: tuple[Path, Path, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    out, _, _ = fitted
    assert main(["list", str(out)]) == 0
    listing = capsys.readouterr().out
    assert "| llama | gemma3 | L2->L1 | affine |" in listing and "yes" in listing
    assert main(["show", str(out / "llama__gemma3" / "L2-L1" / "affine.safetensors")]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["kind"] == "affine" and shown["meta.target_layer"] == 1


@pytest.mark.parametrize(
    "argv,message",
    [
        (["fit", "--source", "nope-model", "--target", "gemma3", "--out", "x"], "not a known alias"),
        (["fit", "--source", "smollm2", "--target", "gemma3", "--data", "/no/such.json"], "no such file"),
        (["fit", "--source", "smollm2", "--target", "gemma3", "--layers", "8-x"], "bad layer list"),
        (["fit", "--source", "smollm2", "--target", "gemma3", "--methods", "magic"], "--methods has unknown magic"),
        (["eval", "--maps", "/no/maps"], "no fitted maps"),
        (["list", "/no/maps"], "manifest.json"),
        (["show", "/no/map.safetensors"], "no such map file"),
    ],
)
def test_bad_input_gives_a_clear_error(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("value", ["fast", "0", "-1e-3", "nan"])
def test_bad_learning_rate_is_refused(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--source", "smollm2", "--target", "gemma3", f"--lr={value}"])
    assert exit_info.value.code == 2 and "expected auto or a number > 0" in capsys.readouterr().err


def test_layers_out_of_range_name_the_model(
    tiny_dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "fit",
        "--source",
        str(tiny_dirs["llama"]),
        "--target",
        str(tiny_dirs["gemma3"]),
        "--layers",
        "3-9",
        "--samples",
        "4",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 2
    assert "out of range for llama: it has layers 0..4" in capsys.readouterr().err


def test_default_layer_pairs_enter_the_embeddings_and_the_same_depth() -> None:
    # 30 source layers, 18 target layers: source layer 2 sits at the depth of target layer 1, layer 8 at layer 5.
    assert layer_pairs([(2,), (8,)], None, 30, 18, full=False) == [((2,), 0), ((2,), 1), ((8,), 0), ((8,), 5)]
    # listed, + per-layer maps (single layers)
    assert layer_pairs([(4,)], [3], 30, 18, full=True) == [((0,), 0), ((2,), 1), ((3,), 2), ((4,), 3)]
    # concatenated layers: the same depth as the deepest of them
    assert layer_pairs([(0, 8)], None, 30, 18, full=False) == [((0, 8), 0), ((0, 8), 5)]


def test_layer_groups_concatenate_with_plus() -> None:
    assert parse_layer_groups("2,4,0+2") == [(2,), (4,), (0, 2)]
    assert parse_layer_groups("2-3,4+0,2") == [(2,), (3,), (0, 4)]
    for bad in ("0+0", "1-3+4", "a+1", "+2"):
        with pytest.raises(ValueError, match="bad layer"):
            parse_layer_groups(bad)


def test_console_script_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "calibrate", "fit", "--help"], capture_output=True, text=True, check=True
    )
    assert "--target-layers" in done.stdout and "letters-qa" in done.stdout and "(default 400)" in done.stdout


def test_eval_scores_the_maps_the_server_would_serve(
    fitted: tuple[Path, Path, list[str]], tiny_dirs: dict[str, Path], tiny: dict[str, LoadedModel]
) -> None:
    from calibrate.evaluation import _maps_for
    from service.api.planner import RequestPlanner
    from service.api.state import ServiceState
    from service.settings import Settings

    out, _, _ = fitted
    store = MapStore(out)
    src, tgt = tiny["llama"], tiny["gemma3"]
    state = ServiceState(
        Settings(models=f"llama={tiny_dirs['llama']},gemma3={tiny_dirs['gemma3']}", maps=out, prepare_maps=False)
    )
    state.load()
    for mode, layer in (("embeds", 0), ("replace", 1), ("full", 1), ("last_token", 1)):
        for method in ("affine", "procrustes"):
            served = RequestPlanner(state).resolve("llama", "gemma3", get_mode(mode), layer, method)
            key = MapKey("llama", "gemma3", served.source_layer or 0, layer, method)
            scored = _maps_for(store, src, tgt, key, get_mode(mode))
            assert scored is not None
            assert sorted((m.source_layer, m.target_layer) for m in scored) == sorted(
                (m.source_layer, m.target_layer) for m in served.maps
            ), (mode, method)
    # A source layer with no map into layer 0: eval, like the server, takes the best map of the method into it.
    fallback = _maps_for(store, src, tgt, MapKey("llama", "gemma3", 3, 1, "affine"), get_mode("embeds"))
    best = RequestPlanner(state).resolve("llama", "gemma3", get_mode("embeds"), None, "affine")
    assert fallback is not None and [(m.source_layer, m.target_layer) for m in fallback] == [(best.source_layer, 0)]


def test_export_keeps_exactly_the_maps_each_mode_is_served_with(
    fitted: tuple[Path, Path, list[str]], tmp_path: Path
) -> None:
    from aligners.resolve import choose
    from service.runtime.modes import HANDOVER_MODES, get_mode

    out, _, _ = fitted
    assert main(["export", "--maps", str(out), "--out", str(tmp_path / "exp")]) == 0
    original, exported = MapStore(out), MapStore(tmp_path / "exp")
    kept = set()
    for source, target in (("llama", "gemma3"), ("gemma3", "llama")):
        for mode in HANDOVER_MODES:
            need = get_mode(mode).need
            args = (source, target, need)
            assert choose(exported.entries(), *args) == choose(original.entries(), *args)
            main_key, below = choose(original.entries(), *args)
            kept.update([main_key, *below])
    assert {e["path"] for e in exported.entries()} == {k.relpath for k in kept}
    for key in kept:
        aligner, _ = exported.load(key)
        assert aligner.tensors is not None and all(t.dtype == torch.float32 for t in aligner.tensors.values())


def test_export_of_some_modes_adds_only_their_maps_to_an_existing_store(
    fitted: tuple[Path, Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aligners.resolve import choose
    from service.runtime.modes import get_mode

    out, _, _ = fitted
    exp = tmp_path / "exp"
    assert main(["export", "--maps", str(out), "--out", str(exp), "--modes", "embeds"]) == 0
    original = MapStore(out)

    def served(mode: str) -> set[str]:
        keys: set[str] = set()
        for source, target in (("llama", "gemma3"), ("gemma3", "llama")):
            args = (source, target, get_mode(mode).need)
            main_key, below = choose(original.entries(), *args)
            keys.update(k.relpath for k in [main_key, *below])
        return keys

    assert {e["path"] for e in MapStore(exp).entries()} == served("embeds")
    assert main(["export", "--maps", str(out), "--out", str(exp), "--modes", "full"]) == 0  # added to the same store
    assert {e["path"] for e in MapStore(exp).entries()} == served("embeds") | served("full")
    capsys.readouterr()
    assert main(["export", "--maps", str(out), "--out", str(tmp_path / "bad"), "--modes", "embeds,native"]) == 2
    err = capsys.readouterr().err
    assert "native" in err and "last_token" in err
    assert not (tmp_path / "bad").exists()
