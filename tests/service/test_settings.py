"""Service settings: environment and flags, validated at start-up with the offending name in the message."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from service.cli import main
from service.settings import Settings


def test_defaults_serve_the_real_pair() -> None:
    s = Settings()
    assert s.model_specs == {"smollm2": "smollm2", "gemma3": "gemma3"}
    assert s.backend == "transformers" and s.dtype == "float32" and s.api_key is None


def test_environment_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTERLINGUA_MODELS", "a=/m/a, b=org/b")
    monkeypatch.setenv("INTERLINGUA_DEVICES", "a=cuda:0,b=cuda:1")
    monkeypatch.setenv("INTERLINGUA_QUEUE_SIZE", "3")
    s = Settings(port=9001)
    assert s.model_specs == {"a": "/m/a", "b": "org/b"}
    assert s.device_map == {"a": "cuda:0", "b": "cuda:1"}
    assert s.queue_size == 3 and s.port == 9001


@pytest.mark.parametrize(
    "env,word",
    [
        ({"INTERLINGUA_MODELS": "justaname"}, "INTERLINGUA_MODELS"),
        ({"INTERLINGUA_QUEUE_SIZE": "0"}, "queue_size"),
        ({"INTERLINGUA_DTYPE": "int4"}, "dtype"),
        ({"INTERLINGUA_PORT": "http"}, "port"),
    ],
)
def test_bad_values_fail_fast_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], word: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValidationError, match=word):
        Settings()


def test_cli_rejects_bad_flags_before_loading(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--queue-size", "-4"]) == 2
    assert "queue_size" in capsys.readouterr().err


def test_cli_help_lists_every_setting() -> None:
    out = subprocess.run([sys.executable, "-m", "service", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--models", "--maps", "--devices", "--api-key", "--max-batch", "INTERLINGUA_QUEUE_SIZE"):
        assert flag in out


def test_unavailable_backend_fails_loading_with_a_clear_detail(tiny_dirs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from service.api.state import ServiceState

    state = ServiceState(Settings(models=f"t={tiny_dirs['llama']}", backend="vllm", maps=tmp_path, prepare_maps=False))
    state.load()
    assert state.status == "failed"
    assert "backend 'vllm' is not available in this build; available: ['transformers']" in state.detail
