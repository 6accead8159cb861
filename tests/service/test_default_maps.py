"""First start: the bundled default maps fitted for the loaded models are installed, whatever aliases they carry."""

from __future__ import annotations

from pathlib import Path

import pytest

from aligners.store import MapStore
from calibrate.cli import main as calibrate
from service.api.planner import RequestPlanner
from service.api.state import ServiceState
from service.runtime.modes import get_mode
from service.settings import Settings


@pytest.mark.slow
def test_bundled_maps_install_by_fingerprint_under_the_servers_aliases(
    tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    bundled = tmp_path / "bundled"
    src, tgt = str(tiny_dirs["llama"]), str(tiny_dirs["gemma3"])
    args = ["fit", "--source", src, "--target", tgt, "--samples", "16", "--eval-samples", "4", "--layers", "1"]
    args += ["--target-layers", "0,1", "--methods", "linear", "--proxy-probes", "4", "--sampled", "0"]
    args += ["--out", str(bundled)]
    assert calibrate([*args, "--cache", str(tmp_path / "cache")]) == 0
    # The bundle names the models after their folders (llama, gemma3); this server calls them x and y.
    settings = Settings(models=f"x={src},y={tgt}", maps=tmp_path / "store", default_maps=bundled)
    state = ServiceState(settings)
    state.load()
    assert state.status == "ready", state.detail
    assert {(e["source"], e["target"]) for e in state.served} == {("x", "y"), ("y", "x")}
    assert len(MapStore(tmp_path / "store").entries()) == len(MapStore(bundled).entries())
    assert RequestPlanner(state).resolve("x", "y", get_mode("embeds"), None, None).target_layer == 0
    assert RequestPlanner(state).resolve("x", "y", get_mode("replace"), None, None).target_layer == 1

    # A bundle fitted for other models installs nothing (and with nothing to fit from, the server says so).
    other = ServiceState(Settings(models=f"x={tgt},y={tgt}", maps=tmp_path / "other", default_maps=bundled))
    assert other._install_bundled({"x": "0" * 16, "y": "1" * 16}) == 0
