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


def test_devices_may_list_several_gpus_per_model() -> None:
    s = Settings(models="a=x,b=y", devices="a=cuda:0,1,b=cuda:2,3")  # compose.yaml's default placement
    assert s.device_map == {"a": "cuda:0,1", "b": "cuda:2,3"}
    with pytest.raises(ValidationError, match="alias=value"):
        Settings(devices="cuda:0,a=cpu")


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


def test_backend_per_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTERLINGUA_BACKENDS", "b=vllm")
    s = Settings(models="a=x,b=y")
    assert (s.backend_for("a"), s.backend_for("b")) == ("transformers", "vllm")
    assert s.vllm_tensor_parallel_size == 1 and s.vllm_gpu_memory_utilization == 0.9
    with pytest.raises(ValidationError, match="BACKENDS: the value for 'b' must be transformers or vllm, got 'tgi'"):
        Settings(backends="b=tgi")
    monkeypatch.setenv("INTERLINGUA_ENCODERS", "a=vllm")
    assert (Settings().encoder_for("a"), Settings().encoder_for("b")) == ("vllm", "transformers")
    with pytest.raises(ValidationError, match="ENCODERS: the value for 'a' must be transformers or vllm, got 'x'"):
        Settings(encoders="a=x")
    with pytest.raises(ValidationError, match="vllm_gpu_memory_utilization"):
        Settings(vllm_gpu_memory_utilization=1.5)


def test_unknown_backend_name_is_refused_naming_the_choices(tiny) -> None:  # type: ignore[no-untyped-def]
    from service.backends import make_backend

    with pytest.raises(ValueError, match=r"unknown backend 'tgi'; available: \['transformers', 'vllm'\]"):
        make_backend("tgi", tiny["llama"])
