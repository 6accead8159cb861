"""Deployment files: both compose files validate with docker-compose (no engine needed), and the Dockerfile installs
the project the way README tells a GPU host to."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def compose_binary() -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("INTERLINGUA_REQUIRE_TOOLS") == "1":
            pytest.fail("docker-compose is not installed (apt-get install -y docker-compose)")
        pytest.skip("docker-compose is not installed")
    return binary


@pytest.mark.parametrize("files", [["compose.yaml"], ["docker/compose.cpu.yaml"]])
def test_compose_files_validate(files: list[str]) -> None:
    args = [compose_binary()]
    for f in files:
        args += ["-f", str(ROOT / f)]
    done = subprocess.run([*args, "config"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    config = done.stdout
    if files == ["compose.yaml"]:
        assert "driver: nvidia" in config and "capabilities:" in config
        assert "meta-llama/Llama-3.1-8B" in config and "mistralai/Mistral-7B-v0.1" in config
        assert "/ready" in config and "restart: unless-stopped" in config and "calibrate" in config
    else:
        assert "nvidia" not in config and "smollm2=smollm2,gemma3=gemma3" in config


def pip_targets(text: str) -> set[str]:
    return set(re.findall(r"pip install (?:-e )?'(\.\[[a-z-]+\])'", text))


def test_dockerfile_installs_what_readme_tells_gpu_hosts() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Installing on a GPU host", 1)[1].split("\n## ", 1)[0]
    assert pip_targets(dockerfile) == {".[vllm]"}
    assert ".[vllm]" in pip_targets(section)
    assert "USER interlingua" in dockerfile and "HEALTHCHECK" in dockerfile and "ENTRYPOINT" in dockerfile


def serve_config(path: Path) -> dict:  # type: ignore[type-arg]
    import yaml

    data = yaml.safe_load(path.read_text())
    return yaml.safe_load(data["spec"]["serveConfigV2"]) if data.get("kind") == "RayService" else data


@pytest.mark.parametrize("name", ["deploy/ray-serve.yaml", "deploy/kuberay-rayservice.yaml"])
def test_ray_serve_configs_validate_and_name_the_deployments_the_app_builds(name: str) -> None:
    """Ray's own schema accepts the config; its deployments are those ``build`` makes for its models, and the
    builder accepts its arguments."""
    try:
        from ray.serve.schema import ServeDeploySchema
    except ImportError:
        if os.environ.get("INTERLINGUA_REQUIRE_TOOLS") == "1":
            pytest.fail("Ray Serve is not installed; make test installs '.[ray]'")
        pytest.skip("Ray Serve is not installed")
    from service.scale.ray_app import AppArgs
    from service.settings import Settings

    config = serve_config(ROOT / name)
    ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    assert app["import_path"] == "service.scale.ray_app:build"
    args = AppArgs(**app["args"])
    models = Settings(**args.settings).model_specs
    built = {"ingress", *(f"{role}-{alias}" for alias in models for role in ("source", "target"))}
    assert {d["name"] for d in app["deployments"]} == built
    if name != "deploy/ray-serve.yaml":
        (local,) = serve_config(ROOT / "deploy/ray-serve.yaml")["applications"]
        assert (app["args"], app["import_path"], app["route_prefix"]) == (
            local["args"],
            local["import_path"],
            local["route_prefix"],
        )
