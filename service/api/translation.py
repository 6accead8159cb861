"""/translate's work, in two halves that can run in different processes: the source side (tokens, states mapped
into the target layer) and the target side (diagnostics), then the response."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field

import torch

from service.api.schemas import LensEntry, NativeCosine, States, Token, TranslateRequest, TranslateResponse
from service.runtime.diagnostics import logit_lens, native_cosine
from service.runtime.handover import Encoder, LayerMap, project
from service.runtime.loading import LoadedModel
from service.runtime.snap import toward_vocabulary


@dataclass
class SourceSide:
    """What the source contributes to /translate: its tokens and their states mapped into the target layer."""

    tokens: list[Token]
    mapped: torch.Tensor  # (n, d_B), float32, as the map wrote them
    offsets: list[tuple[int, int]]
    timings_ms: dict[str, float]
    snap: float = 0.0  # the map's pull toward the target's embedding rows (``LayerMap.snap``), applied by the target
    snap_tokens: torch.Tensor | None = None  # what the snap moves, for a map into a deeper layer (``LayerMap.tokens``)


@dataclass
class TargetSide:
    """The states as the target reads them (the source side's, with the map's snap applied) and the target's
    diagnostics of them (each None unless asked for)."""

    mapped: torch.Tensor
    logit_lens: list[list[LensEntry]] | None = None
    native_cosine: NativeCosine | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


def source_side(src: LoadedModel, encoder: Encoder, text: str, layer_map: LayerMap) -> SourceSide:
    projected = project(src, text, [layer_map], encoder)
    tokens = [
        Token(id=i, text=src.decode_continuation([i]), start=s, end=e)
        for i, (s, e) in zip(projected.ids, projected.offsets, strict=True)
    ]
    layer = layer_map.target_layer
    return SourceSide(
        tokens,
        projected.mapped[layer],
        projected.offsets,
        projected.timings_ms,
        projected.snap.get(layer, 0.0),
        projected.tokens.get(layer),
    )


def target_side(tgt: LoadedModel, req: TranslateRequest, layer: int, src: SourceSide) -> TargetSide:
    t0 = time.perf_counter()
    out = TargetSide(toward_vocabulary(tgt, src.mapped, src.snap, tokens=src.snap_tokens).float())
    if req.top_k:
        lens = logit_lens(tgt, out.mapped, req.top_k)
        out.logit_lens = [[LensEntry(token=t, id=i, prob=p) for t, i, p in row] for row in lens]
    if req.compare_native:
        per, mean = native_cosine(tgt, req.text, layer, out.mapped, src.offsets)
        out.native_cosine = NativeCosine(per_position=per, mean=mean)
    if req.top_k or req.compare_native:
        out.timings_ms["diagnostics"] = (time.perf_counter() - t0) * 1e3
    return out


def response(
    req: TranslateRequest, maps: list[LayerMap], method: str | None, src: SourceSide, tgt: TargetSide
) -> TranslateResponse:
    mapped = tgt.mapped
    result = TranslateResponse(
        source=req.source,
        target=req.target,
        source_layer=maps[0].source_layer,
        source_layers=maps[0].concatenated,
        target_layer=maps[0].target_layer,
        method=method or "",
        tokens=src.tokens,
        shape=list(mapped.shape),
        snap=src.snap,
        timings_ms={**src.timings_ms, **tgt.timings_ms},
        logit_lens=tgt.logit_lens,
        native_cosine=tgt.native_cosine,
    )
    if req.return_states == "base64":
        raw = mapped.to(torch.float16).numpy().astype("<f2").tobytes()
        result.states = States(
            dtype="float16", shape=list(mapped.shape), encoding="base64", data=base64.b64encode(raw).decode()
        )
    elif req.return_states == "list":
        result.states = States(dtype="float32", shape=list(mapped.shape), encoding="list", data=mapped.tolist())
    return result
