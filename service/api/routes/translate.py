"""POST /translate: project A's states for a text into B's space, with diagnostics."""

from __future__ import annotations

import base64
import time
from typing import Any

import torch
from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from service.api.deps import Authorized, EngineDep, MetricsDep, StateDep
from service.api.errors import InvalidRequestError, TooLargeError
from service.api.schemas import (
    ErrorBody,
    LensEntry,
    NativeCosine,
    States,
    Token,
    TranslateRequest,
    TranslateResponse,
)
from service.api.state import Resolved, ServiceState
from service.runtime.diagnostics import logit_lens, native_cosine

router = APIRouter(tags=["translate"], dependencies=[Authorized])
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 401, 404, 413, 422, 503, 504)}


def check_length(state: ServiceState, **texts: str) -> None:
    limit = state.settings.max_text_chars
    for name, text in texts.items():
        if len(text) > limit:
            raise TooLargeError(f"{name} has {len(text)} characters; this server accepts at most {limit}")


def translate(state: ServiceState, req: TranslateRequest, resolved: Resolved) -> TranslateResponse:
    """Runs on the model worker."""
    src, tgt = state.model(req.source), state.model(req.target)
    layer_map = resolved.maps[0]
    t0 = time.perf_counter()
    enc = state.encoder(req.source, [layer_map.source_layer])([req.text], [layer_map.source_layer])[0]
    t1 = time.perf_counter()
    mapped = layer_map.aligner.transform(enc.states[layer_map.source_layer].float())  # (n, d_tgt)
    t2 = time.perf_counter()
    timings = {"encode": (t1 - t0) * 1e3, "project": (t2 - t1) * 1e3}
    tokens = [
        Token(id=i, text=src.decode_continuation([i]), start=s, end=e)
        for i, (s, e) in zip(enc.ids, enc.offsets, strict=True)
    ]
    response = TranslateResponse(
        source=req.source,
        target=req.target,
        source_layer=layer_map.source_layer,
        target_layer=layer_map.target_layer,
        method=resolved.method or "",
        tokens=tokens,
        shape=list(mapped.shape),
        timings_ms=timings,
    )
    if req.return_states == "base64":
        raw = mapped.to(torch.float16).numpy().astype("<f2").tobytes()
        response.states = States(
            dtype="float16", shape=list(mapped.shape), encoding="base64", data=base64.b64encode(raw).decode()
        )
    elif req.return_states == "list":
        response.states = States(dtype="float32", shape=list(mapped.shape), encoding="list", data=mapped.tolist())
    if req.top_k:
        response.logit_lens = [
            [LensEntry(token=t, id=i, prob=p) for t, i, p in row] for row in logit_lens(tgt, mapped, req.top_k)
        ]
    if req.compare_native:
        per, mean = native_cosine(tgt, req.text, layer_map.target_layer, mapped, enc.offsets)
        response.native_cosine = NativeCosine(per_position=per, mean=mean)
    timings["total"] = (time.perf_counter() - t0) * 1e3
    response.timings_ms = timings
    return response


@router.post(
    "/translate",
    response_model=TranslateResponse,
    responses=ERRORS,
    summary="Map A's hidden states for a text into B's space",
)
async def post_translate(req: TranslateRequest, state: StateDep, engine: EngineDep, m: MetricsDep) -> TranslateResponse:
    state.require_ready()
    check_length(state, text=req.text)
    # Resolved before queueing, so unknown models or maps answer 404 without waiting for the worker.
    resolved = await run_in_threadpool(state.resolve, req.source, req.target, "translate", req.layer, req.method)
    try:
        result: TranslateResponse = await engine.call(lambda: translate(state, req, resolved))
    except ValueError as err:  # a text the models cannot take (no tokens, longer than their positions)
        raise InvalidRequestError(str(err)) from None
    m.tokens.labels("source").inc(len(result.tokens))
    return result
