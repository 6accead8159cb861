"""Which maps a server serves, decided once at start: by fingerprint, every file loaded and checked, with reasons."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from aligners.store import MapStore
from calibrate.cli import main as calibrate
from service.api.errors import NotFoundError
from service.api.planner import RequestPlanner
from service.api.state import ServiceState
from service.runtime.modes import get_mode
from service.settings import Settings


@pytest.fixture(scope="module")
def fitted(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("start") / "maps"
    args = ["fit", "--source", str(tiny_dirs["llama"]), "--target", str(tiny_dirs["gemma3"]), "--samples", "16"]
    args += ["--eval-samples", "4", "--layers", "1,2", "--target-layers", "1", "--methods", "affine,linear"]
    args += ["--sampled", "0"]
    assert calibrate([*args, "--proxy-probes", "4", "--out", str(out), "--cache", str(out.parent / "cache")]) == 0
    return out


def _state(tiny_dirs: dict[str, Path], maps: Path, **models: str) -> ServiceState:
    spec = ",".join(f"{a}={tiny_dirs[m]}" for a, m in (models or {"llama": "llama", "gemma3": "gemma3"}).items())
    state = ServiceState(Settings(models=spec, maps=maps, prepare_maps=False))
    state.load()
    assert state.status == "ready", state.detail
    return state


def _copy(fitted: Path, tmp_path: Path) -> tuple[Path, dict]:
    maps = tmp_path / "maps"
    shutil.copytree(fitted, maps)
    return maps, json.loads((maps / "manifest.json").read_text())


def test_a_corrupt_file_or_a_changed_fingerprint_is_refused_at_start(
    fitted: Path, tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    maps, manifest = _copy(fitted, tmp_path)
    corrupt, changed = manifest["maps"][0]["path"], manifest["maps"][1]["path"]
    (maps / corrupt).write_bytes(b"not a safetensors file")
    with safe_open(str(maps / changed), framework="pt") as f:
        header, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    header["meta.target_fingerprint"] = json.dumps("0" * 16)  # the manifest still says the right one
    save_file(tensors, str(maps / changed), metadata=header)
    state = _state(tiny_dirs, maps)
    reasons = {r["path"]: r["reason"] for r in state.refused}
    assert set(reasons) == {corrupt, changed}
    assert "not a readable safetensors file" in reasons[corrupt] and "0" * 16 in reasons[changed]
    assert {e["path"] for e in state.served}.isdisjoint(reasons)
    assert len(state.served) == len(manifest["maps"]) - 2


def test_when_the_default_map_is_refused_another_map_of_the_pair_serves(
    fitted: Path, tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    maps, manifest = _copy(fitted, tmp_path)
    d = manifest["defaults"]["llama__gemma3"]
    default = f"llama__gemma3/L{d['source_layer']}-L{d['target_layer']}/{d['method']}.safetensors"
    (maps / default).write_bytes(b"broken")
    state = _state(tiny_dirs, maps)
    resolved = RequestPlanner(state).resolve("llama", "gemma3", get_mode("replace"), None, None)
    served = f"llama__gemma3/L{resolved.source_layer}-L{resolved.target_layer}/{resolved.method}.safetensors"
    assert served != default and resolved.maps


def test_maps_of_models_not_loaded_are_skipped_with_a_log_line(
    fitted: Path, tiny_dirs: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="interlingua"):
        state = _state(tiny_dirs, fitted, llama="llama", mistral="mistral")
    assert state.served == [] and state.refused == []
    assert any("skipped" in r.getMessage() and "does not load" in r.getMessage() for r in caplog.records)
    assert "interlingua-calibrate fit" in state.detail and "native" in state.detail
    with pytest.raises(NotFoundError, match="no maps served for llama -> mistral"):
        RequestPlanner(state).resolve("llama", "mistral", get_mode("replace"), None, None)


def test_helper_maps_are_no_default_and_ties_change_nothing(tmp_path: Path) -> None:
    store = MapStore(tmp_path)
    entry = {"source": "a", "target": "b", "method": "affine", "metrics": {"r2": 0.5}}
    maps = [
        {**entry, "source_layer": 0, "target_layer": 0, "path": "x0", "helper": True, "metrics": {"r2": 0.99}},
        {**entry, "source_layer": 4, "target_layer": 2, "path": "x1"},
        {**entry, "source_layer": 6, "target_layer": 2, "path": "x2", "metrics": {"r2": 0.7}},
    ]
    store.write_manifest({"format_version": 1, "maps": maps, "defaults": {}})
    assert store.choose_defaults("r2") == ["default a -> b: affine L6->L2 (best r2)"]
    for e in maps:
        e["eval"] = {"f1": 0.0}  # every map scores the same
    store.write_manifest({**store.manifest(), "maps": maps})
    assert store.choose_defaults("f1") == []
    assert store.manifest()["defaults"]["a__b"]["source_layer"] == 6
