"""Service settings: environment variables with the ``INTERLINGUA_`` prefix, overridable by ``interlingua-serve``
flags. Bad values fail at start-up with the variable's name."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.runtime.convert import cache_home
from service.runtime.realpair import PAIR as REAL_PAIR

BackendName = Literal["transformers", "vllm"]
EncoderName = Literal["transformers", "vllm"]


def parse_assignments(text: str, what: str) -> dict[str, str]:
    """``"a=x,b=y"`` -> {"a": "x", "b": "y"}. A part without ``=`` continues the previous value, so that
    ``"a=cuda:0,1,b=cuda:2,3"`` places a on GPUs 0 and 1 and b on 2 and 3."""
    out: dict[str, str] = {}
    last: str | None = None
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep and last is not None:
            out[last] += f",{part}"
            continue
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"{what} must look like alias=value,alias=value; got {part!r}")
        last = name.strip()
        out[last] = value.strip()
    return out


class VLLMSettings(BaseModel):
    """The vLLM backend's own settings group (``Settings.vllm``), read from the ``INTERLINGUA_VLLM_*`` variables."""

    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    enforce_eager: bool | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INTERLINGUA_", extra="ignore")

    models: str = Field(
        ",".join(f"{alias}={alias}" for alias in REAL_PAIR),
        description="alias=spec pairs: the models to load (default: the real small pair)",
    )
    maps: Path = Field(default_factory=lambda: cache_home() / "maps", description="map store folder")
    prepare_maps: bool = Field(
        True,
        description="when the store has no maps for the loaded models: install the bundled default maps fitted for "
        "them (matched by fingerprint)",
    )
    default_maps: Path = Field(
        Path(__file__).resolve().parent / "default_maps", description="the bundled default map store"
    )
    backend: BackendName = Field(
        "transformers", description="decoder for every target model: transformers (all modes) or vllm (native, embeds)"
    )
    backends: str = Field("", description="alias=backend pairs overriding `backend` per model")
    encoder: EncoderName = Field(
        "transformers",
        description="source-state encoder for every source model: transformers, or vllm (a pooling engine cut after "
        "the deepest layer the served maps read; other layers fall back to transformers)",
    )
    encoders: str = Field("", description="alias=encoder pairs overriding `encoder` per model")
    vllm_tensor_parallel_size: int = Field(1, ge=1, description="GPUs vLLM shards each served model over")
    vllm_gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="share of GPU memory vLLM may take")
    vllm_max_model_len: int | None = Field(None, ge=16, description="vLLM context length (default: the model's)")
    vllm_enforce_eager: bool | None = Field(None, description="skip CUDA graphs (default: only on CPU)")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    devices: str = Field("", description="alias=device pairs (cpu, cuda:N, cuda:N,M); unlisted models use cpu")
    max_text_chars: int = Field(20_000, ge=1, description="longest text or prompt accepted (413 beyond)")
    max_new_tokens: int = Field(256, ge=1, le=8192, description="upper bound a request may ask for")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="largest request body accepted (413 beyond)")
    request_timeout_s: float = Field(600.0, gt=0, description="longest the server lets a request run (504 beyond)")
    shutdown_grace_s: float = Field(30.0, ge=0, description="on SIGTERM, time given to work in flight")
    queue_size: int = Field(64, ge=1, description="requests waiting for the model worker (503 beyond)")
    max_batch: int = Field(8, ge=1, description="generate requests decoded together")
    api_key: str | None = Field(None, description="when set, requests need 'Authorization: Bearer <key>'")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)

    @field_validator("models")
    @classmethod
    def _models(cls, value: str) -> str:
        if len(parse_assignments(value, "INTERLINGUA_MODELS")) < 1:
            raise ValueError("INTERLINGUA_MODELS needs at least one alias=spec")
        return value

    @field_validator("devices")
    @classmethod
    def _devices(cls, value: str) -> str:
        parse_assignments(value, "INTERLINGUA_DEVICES")
        return value

    @field_validator("backends", "encoders")
    @classmethod
    def _per_model(cls, value: str, info: ValidationInfo) -> str:
        variable = f"INTERLINGUA_{str(info.field_name).upper()}"
        for alias, name in parse_assignments(value, variable).items():
            if name not in get_args(BackendName):
                raise ValueError(f"{variable}: the value for {alias!r} must be transformers or vllm, got {name!r}")
        return value

    def backend_for(self, alias: str) -> str:
        return parse_assignments(self.backends, "INTERLINGUA_BACKENDS").get(alias, self.backend)

    def encoder_for(self, alias: str) -> str:
        return parse_assignments(self.encoders, "INTERLINGUA_ENCODERS").get(alias, self.encoder)

    @property
    def vllm(self) -> VLLMSettings:
        return VLLMSettings(
            tensor_parallel_size=self.vllm_tensor_parallel_size,
            gpu_memory_utilization=self.vllm_gpu_memory_utilization,
            max_model_len=self.vllm_max_model_len,
            enforce_eager=self.vllm_enforce_eager,
        )

    @property
    def vllm_options(self) -> dict[str, object]:
        """What every vLLM engine here is built with (``vllm_engine.engine_options``): dtype and the vLLM group."""
        return {"dtype": self.dtype, **self.vllm.model_dump()}

    @property
    def model_specs(self) -> dict[str, str]:
        return parse_assignments(self.models, "INTERLINGUA_MODELS")

    @property
    def device_map(self) -> dict[str, str]:
        return parse_assignments(self.devices, "INTERLINGUA_DEVICES")
