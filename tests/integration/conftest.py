"""Servers for the integration suite: ``interlingua-serve`` started as a real process on a free loopback port.

With INTERLINGUA_URL set, the suite talks to that server instead (a deployment); tests that need a specially
configured server (API key, tiny queue, failed loading) are skipped then.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from calibrate.cli import main as calibrate
from tests.conftest import require_tool

EXTERNAL = os.environ.get("INTERLINGUA_URL")


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes] | None
    log: Path | None

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, **kwargs)  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(env: dict[str, str], log: Path, wait_ready: bool = True, timeout: float = 300) -> Server:
    port = free_port()
    full_env = {**os.environ, **env, "INTERLINGUA_HOST": "127.0.0.1", "INTERLINGUA_PORT": str(port)}
    handle = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "--log-level", "warning"],
        env=full_env,
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    server = Server(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            status = httpx.get(f"{server.url}/ready", timeout=2).status_code
            if status == 200 or (not wait_ready and status == 503):
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    stop_server(server)
    raise RuntimeError(f"server not ready after {timeout}s:\n{log.read_text()[-3000:]}")


def stop_server(server: Server) -> None:
    if server.process is not None and server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.process.kill()


@pytest.fixture(scope="session")
def tiny_maps(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A map store between the tiny llama and gemma3, with --full maps, plus one stale map (wrong fingerprint) and
    no gemma3 -> llama map into layer 0."""
    root = tmp_path_factory.mktemp("served")
    out = root / "maps"
    args = [
        "fit",
        "--source",
        str(tiny_dirs["llama"]),
        "--target",
        str(tiny_dirs["gemma3"]),
        "--samples",
        "24",
        "--eval-samples",
        "4",
        "--layers",
        "1-2",
        "--target-layers",
        "0,1,2",
        "--methods",
        "affine,procrustes",
        "--sampled",
        "0",
        "--full",
        "--out",
        str(out),
        "--cache",
        str(root / "cache"),
    ]
    assert calibrate(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    # Drop every gemma3 -> llama map into layer 0, so that `full` mode has a layer no map enters.
    dropped = [e["path"] for e in manifest["maps"] if e["path"].startswith("gemma3__llama/") and "-L0/" in e["path"]]
    assert dropped
    manifest["maps"] = [e for e in manifest["maps"] if e["path"] not in dropped]
    manifest["defaults"] = {k: v for k, v in manifest["defaults"].items() if k != "gemma3__llama" or v["target_layer"]}
    for path in dropped:
        (out / path).unlink()
    stale = dict(next(e for e in manifest["maps"] if e["method"] == "affine"))
    stale_path = stale["path"].replace("affine", "stale")
    shutil.copy(out / stale["path"], out / stale_path)
    stale.update(path=stale_path, method="stale", target_fingerprint="0" * 16)
    manifest["maps"].append(stale)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def tiny_env(tiny_dirs: dict[str, Path], maps: Path, **extra: str) -> dict[str, str]:
    return {
        "INTERLINGUA_MODELS": f"llama={tiny_dirs['llama']},gemma3={tiny_dirs['gemma3']}",
        "INTERLINGUA_MAPS": str(maps),
        "INTERLINGUA_PREPARE_MAPS": "false",
        "INTERLINGUA_MAX_TEXT_CHARS": "2000",
        "INTERLINGUA_MAX_NEW_TOKENS": "64",
        **extra,
    }


@pytest.fixture(scope="session")
def server(tiny_dirs: dict[str, Path], tiny_maps: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if EXTERNAL:
        yield Server(EXTERNAL.rstrip("/"), None, None)
        return
    s = start_server(tiny_env(tiny_dirs, tiny_maps), tmp_path_factory.mktemp("log") / "server.log")
    yield s
    stop_server(s)


def special_server(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Server]:
    """For fixtures: a locally started server with special settings (skipped against a deployment), stopped after."""
    if EXTERNAL:
        pytest.skip("needs a locally started server with special settings")
    s = start_server(env, tmp_path_factory.mktemp("log") / f"{name}.log")
    yield s
    stop_server(s)


@pytest.fixture(scope="session")
def strict_server(
    tiny_dirs: dict[str, Path], tiny_maps: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A server with an API key, a queue of one and no batching."""
    env = tiny_env(
        tiny_dirs, tiny_maps, INTERLINGUA_API_KEY="sesame", INTERLINGUA_QUEUE_SIZE="1", INTERLINGUA_MAX_BATCH="1"
    )
    yield from special_server(env, tmp_path_factory, "strict")


@pytest.fixture(scope="session")
def pair(server: Server) -> dict[str, object]:
    """The first (source, target) pair with a default map, as the server reports it."""
    with server.client() as c:
        body = c.get("/v1/models").json()
    default = next(m for m in body["maps"] if m["default"])
    return {
        "source": default["source"],
        "target": default["target"],
        "layer": default["target_layer"],
        "method": default["method"],
    }


@contextlib.contextmanager
def ray_serve(settings: dict[str, object], replicas: dict[str, int], work_log: Path | None = None) -> Iterator[Server]:
    """The Ray Serve application (service.scale.ray_app) on a local Ray cluster started here, ready, then shut down.
    ``replicas``: per deployment (the ingress gets one); every replica asks for no CPU, so all fit on a small host."""
    if EXTERNAL:
        pytest.skip("starts its own local Ray cluster")
    require_tool("ray.serve", "Ray Serve", "ray")
    import ray
    from ray import serve

    from service.scale.ray_app import build

    env = {"INTERLINGUA_WORK_LOG": str(work_log)} if work_log else {}
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        cpu0 = {"ray_actor_options": {"num_cpus": 0}}
        deployments = {name: {**cpu0, "num_replicas": n} for name, n in {"ingress": 1, **replicas}.items()}
        serve.run(build({"settings": settings, "deployments": deployments}), name="interlingua", route_prefix="/")
        server = Server(f"http://127.0.0.1:{port}", None, None)
        with server.client() as c:
            deadline = time.monotonic() + 600
            while (ready := c.get("/ready")).status_code != 200:
                assert time.monotonic() < deadline, ready.text
                time.sleep(1)
        yield server
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def default_server(real_pair: dict[str, object], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``make serve`` from an empty map store: the bundled default maps are installed on first start (in the store
    next to its log: ``server.log.parent / "maps"``)."""
    if EXTERNAL:
        pytest.skip("starts its own server")
    root = tmp_path_factory.mktemp("defaults")
    server = start_server({"INTERLINGUA_MAPS": str(root / "maps")}, root / "server.log")  # default models, settings
    yield server
    stop_server(server)
