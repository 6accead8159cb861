"""Request and response bodies of the HTTP API, with bounds and examples (they drive validation and /docs)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from service.runtime.modes import MODES

SEED_MAX = 2**63 - 1  # torch generators take a signed 64-bit seed
STOP_MAX_CHARS = 256


def _unicode(text: str) -> str:
    """Refuse text that is not valid Unicode (a lone surrogate from a JSON escape such as \\ud800)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"not valid Unicode: lone surrogate at character {err.start}") from None
    return text


Text = Annotated[str, AfterValidator(_unicode)]
StopString = Annotated[str, Field(min_length=1, max_length=STOP_MAX_CHARS), AfterValidator(_unicode)]

if TYPE_CHECKING:
    HandoverMode = str
else:
    HandoverMode = Literal[tuple(MODES)]  # the modes registry's names, as an enum in the schema

TEXT_EXAMPLE = "Ysolde Marrow built a lighthouse in Quillmere in 1874. It was later run by Corin Aske."


class ModelInfo(BaseModel):
    alias: str
    architecture: str
    layers: int = Field(description="number of blocks N; layers are 0..N (0 = embeddings)")
    hidden_size: int
    fingerprint: str
    device: str
    backend: str = Field(description="what decodes this model as a target: transformers or vllm")
    encoder: str = Field(
        description="what computes this model's states as a source: vllm (for the layers its maps read) or transformers"
    )


SOURCE_LAYERS = Field(
    default=None,
    description="where the map reads several source layers concatenated per token: all of them, ascending "
    "(source_layer is the deepest); null where it reads one",
)


class MapInfo(BaseModel):
    source: str
    target: str
    source_layer: int
    source_layers: list[int] | None = SOURCE_LAYERS
    target_layer: int
    method: str
    metrics: dict[str, float] = Field(default_factory=dict, description="held-out representation metrics")
    eval: dict[str, float] = Field(default_factory=dict, description="task metrics from `interlingua-calibrate eval`")
    default: bool = False


class RefusedMap(BaseModel):
    path: str
    reason: str


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    maps: list[MapInfo]
    refused_maps: list[RefusedMap] = Field(default_factory=list, description="maps not served, and why")


class TranslateRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "source": "smollm2",
                    "target": "gemma3",
                    "text": TEXT_EXAMPLE,
                    "return_states": "none",
                    "top_k": 3,
                    "compare_native": True,
                }
            ]
        },
    )

    source: str = Field(description="alias of the model that reads the text (A)")
    target: str = Field(description="alias of the model whose space the states are mapped into (B)")
    text: Text = Field(min_length=1, description="what A reads")
    layer: int | None = Field(None, ge=0, description="target layer to map into (default: the default map's)")
    method: str | None = Field(None, description="map method, e.g. affine (default: the default map's)")
    return_states: Literal["none", "base64", "list"] = "none"
    top_k: int = Field(0, ge=0, le=20, description="logit lens: B's top-k tokens per position (0 = off)")
    compare_native: bool = Field(False, description="cosine to B's own states at aligned positions")


class Token(BaseModel):
    id: int
    text: str
    start: int
    end: int


class States(BaseModel):
    dtype: str
    shape: list[int]
    encoding: Literal["base64", "list"]
    data: str | list[list[float]] = Field(description="base64 of little-endian float16, or nested lists")


class LensEntry(BaseModel):
    token: str
    id: int
    prob: float


class NativeCosine(BaseModel):
    per_position: list[float | None] = Field(description="per source token; null where no target token ends there")
    mean: float | None


class TranslateResponse(BaseModel):
    source: str
    target: str
    source_layer: int
    source_layers: list[int] | None = SOURCE_LAYERS
    target_layer: int
    method: str
    tokens: list[Token]
    shape: list[int]
    snap: float = Field(
        0.0,
        description="how far the mapped states' token part was moved toward B's nearest input-embedding rows before "
        "B reads them (0 = as mapped, 1 = the rows; maps into layer 0, and deeper maps with a readout into it, carry "
        "it from their fit)",
    )
    states: States | None = Field(None, description="the mapped states as B reads them (snap applied)")
    logit_lens: list[list[LensEntry]] | None = None
    native_cosine: NativeCosine | None = None
    timings_ms: dict[str, float]


class GenerateRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "source": "smollm2",
                    "target": "gemma3",
                    "text": TEXT_EXAMPLE,
                    "prompt": "\nQuestion: In which year was the lighthouse built?\nAnswer:",
                    "mode": "embeds",
                    "max_new_tokens": 8,
                    "stop": ["\n"],
                }
            ]
        },
    )

    source: str
    target: str
    text: Text = Field(min_length=1, description="what A reads and hands over")
    prompt: Text = Field("", description="what B reads natively after the handed-over text")
    mode: HandoverMode | None = Field(
        None,
        description="how B receives A's reading (default: embeds where the handover enters B at layer 0, i.e. "
        "`layer` or, without one, the pair's default map's target layer; replace otherwise)",
    )
    layer: int | None = Field(None, ge=0, description="target injection layer (default: the default map's)")
    method: str | None = None
    op: Literal["replace", "sum", "mean"] = Field("replace", description="last_token mode: how A's state enters")
    grid: Literal["source", "target"] = Field(
        "source",
        description="whose tokens the handed-over states follow: one per source token, or one per token of the "
        "target's own tokenisation of text, each from the source token aligned with it",
    )
    max_new_tokens: int = Field(32, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=5.0, allow_inf_nan=False, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    stop: list[StopString] = Field(
        default_factory=list, max_length=8, description=f"up to 8 strings of 1-{STOP_MAX_CHARS} characters"
    )
    timeout_s: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="end the request with 408 `timeout` past this many seconds (the server's own limit, "
        "INTERLINGUA_REQUEST_TIMEOUT_S, ends it with 504 when it is shorter)",
    )
    stream: bool = False


class Usage(BaseModel):
    source_tokens: int
    target_prompt_tokens: int
    completion_tokens: int


class GenerateResponse(BaseModel):
    text: str
    finish_reason: Literal["stop", "length"]
    usage: Usage
    source_layer: int | None
    source_layers: list[int] | None = SOURCE_LAYERS
    target_layer: int | None
    method: str | None
    mode: HandoverMode
    timings_ms: dict[str, float]


class ErrorBody(BaseModel):
    error: str
    detail: str
