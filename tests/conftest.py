"""Shared fixtures: tiny models are built once per test session and saved as real checkpoint folders."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.runtime.loading import LoadedModel, load_model
from tests.tiny import save_tiny

ARCHS = ("llama", "mistral", "gemma3", "qwen2", "qwen3")


def require_tool(module: str, name: str, extra: str) -> None:
    """Skip a test whose optional tool is not installed, unless INTERLINGUA_REQUIRE_TOOLS=1 (CI), where that fails."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as err:
        if os.environ.get("INTERLINGUA_REQUIRE_TOOLS") == "1":
            pytest.fail(f"{name} is not installed ({err}); make test installs '.[{extra}]'")
        pytest.skip(f"{name} is not installed (pip install '.[{extra}]')")


def _children() -> list[str]:
    """Live child processes of this test process: zombies, the ``ps`` call itself and Python's own multiprocessing
    resource tracker (it belongs to the interpreter and ends with it) left out."""
    out = subprocess.run(
        ["ps", "-ww", "-o", "pid=,stat=,args=", "--ppid", str(os.getpid())], capture_output=True, text=True
    )
    rows = [line.split(None, 2) for line in out.stdout.splitlines() if line.strip()]
    return [
        " ".join(r)
        for r in rows
        if len(r) == 3
        and not r[1].startswith("Z")
        and not r[2].startswith("ps ")
        and "multiprocessing.resource_tracker" not in r[2]
    ]


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_suite() -> Iterator[None]:
    """Servers, vLLM engine cores and their workers are all closed by the end of the session."""
    yield
    deadline = time.monotonic() + 30
    while _children() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _children(), f"processes left running after the tests: {_children()}"


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    # Different vocabularies, so that source and target tokenise the same text differently.
    return {
        "llama": save_tiny(root / "llama", "llama", vocab_size=400, seed=0),
        "mistral": save_tiny(root / "mistral", "mistral", vocab_size=300, seed=1),
        "gemma3": save_tiny(root / "gemma3", "gemma3", vocab_size=500, seed=2),
        "qwen2": save_tiny(root / "qwen2", "qwen2", vocab_size=350, seed=3),
        "qwen3": save_tiny(root / "qwen3", "qwen3", vocab_size=450, seed=4),
    }


@pytest.fixture(scope="session")
def tiny(tiny_dirs: dict[str, Path]) -> dict[str, LoadedModel]:
    """The tiny models on INTERLINGUA_TEST_DEVICE (default cpu; e.g. cuda:0 to run the runtime oracles on a GPU)."""
    device = os.environ.get("INTERLINGUA_TEST_DEVICE", "cpu")
    return {arch: load_model(str(path), name=arch, device=device) for arch, path in tiny_dirs.items()}


def required_real() -> set[str]:
    """The real models a missing one of fails the run instead of skipping: INTERLINGUA_REQUIRE_REAL is ``1`` (the
    pair, as ``make test`` and CI set it) or a comma-separated list of aliases and ``1`` (``1,qwen``: the pair and
    Qwen)."""
    named = {part.strip() for part in os.environ.get("INTERLINGUA_REQUIRE_REAL", "").split(",") if part.strip()}
    return (named - {"1"}) | ({"smollm2", "gemma3"} if "1" in named else set())


def load_real(aliases: tuple[str, ...]) -> dict[str, LoadedModel]:
    """Real models by alias, or a skip naming the command that prepares them (a failure where they are required)."""
    from service.runtime.realpair import ModelNotInstalledError

    try:
        return {alias: load_model(alias, name=alias) for alias in aliases}
    except ModelNotInstalledError as err:
        if set(aliases) & required_real():
            raise
        pytest.skip(f"real model not prepared ({err})")


@pytest.fixture(scope="session")
def real_pair() -> dict[str, LoadedModel]:
    """smollm2 and gemma3, loaded once per session. Skips when the pair is not installed, unless
    INTERLINGUA_REQUIRE_REAL=1 (``make test``, CI), where a missing pair is an error."""
    return load_real(("smollm2", "gemma3"))


@pytest.fixture(scope="session")
def real_qwen() -> LoadedModel:
    """Qwen2.5-Coder-0.5B-Instruct (``make models-qwen``), loaded once per session; skips when it is not prepared,
    unless INTERLINGUA_REQUIRE_REAL names qwen."""
    return load_real(("qwen",))["qwen"]
