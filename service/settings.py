"""Service settings: environment variables with the ``INTERLINGUA_`` prefix, overridable by ``interlingua-serve``
flags. Bad values fail at start-up with the variable's name."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.runtime.loading import cache_home


def parse_assignments(text: str, what: str) -> dict[str, str]:
    """``"a=x,b=y"`` -> {"a": "x", "b": "y"}."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"{what} must look like alias=value,alias=value; got {part!r}")
        out[name.strip()] = value.strip()
    return out


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INTERLINGUA_", extra="ignore")

    models: str = Field("smollm2=smollm2,gemma3=gemma3", description="alias=spec pairs: the models to load")
    maps: Path = Field(default_factory=lambda: cache_home() / "maps", description="map store folder")
    prepare_maps: bool = Field(True, description="fit a small default map set when the store has none for the pair")
    backend: Literal["transformers", "vllm"] = "transformers"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    devices: str = Field("", description="alias=device pairs (cpu, cuda:N, cuda:N,M); unlisted models use cpu")
    max_text_chars: int = Field(20_000, ge=1, description="longest text or prompt accepted (413 beyond)")
    max_new_tokens: int = Field(256, ge=1, le=8192, description="upper bound a request may ask for")
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

    @property
    def model_specs(self) -> dict[str, str]:
        return parse_assignments(self.models, "INTERLINGUA_MODELS")

    @property
    def device_map(self) -> dict[str, str]:
        return parse_assignments(self.devices, "INTERLINGUA_DEVICES")
