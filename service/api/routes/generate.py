"""POST /generate: encode with A, project, continue in B (JSON, or a token stream as server-sent events)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.api.deps import Authorized, EngineDep, MetricsDep, StateDep
from service.api.engine import GenerateJob
from service.api.errors import InvalidRequestError, ServiceError
from service.api.routes.translate import ERRORS, check_length
from service.api.schemas import GenerateRequest, GenerateResponse, Usage
from service.api.state import Resolved, ServiceState
from service.runtime.generate import Completion, Prompt, SamplingParams
from service.runtime.handover import prepare

router = APIRouter(tags=["generate"], dependencies=[Authorized])


def _job(state: ServiceState, req: GenerateRequest, resolved: Resolved) -> GenerateJob:
    src, tgt = state.model(req.source), state.model(req.target)

    def build() -> tuple[Prompt, dict[str, float], int]:
        handover = prepare(src, tgt, req.text, req.prompt, req.mode, resolved.maps, req.op)
        return handover.prompt, handover.timings_ms, 0 if req.mode == "native" else len(handover.source_ids)

    params = SamplingParams(
        max_new_tokens=req.max_new_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        seed=req.seed,
        stop=list(req.stop),
    )
    group = (req.target, req.mode, resolved.target_layer)
    backend = state.backend(req.target, req.mode, resolved.target_layer or 0)
    return GenerateJob(group=group, backend=backend, build=build, params=params, loop=asyncio.get_running_loop())


def _response(
    req: GenerateRequest, resolved: Resolved, done: tuple[Completion, dict[str, float], int]
) -> GenerateResponse:
    completion, timings, source_tokens = done
    return GenerateResponse(
        text=completion.text,
        finish_reason=completion.finish_reason,
        usage=Usage(
            source_tokens=source_tokens,
            target_prompt_tokens=completion.prompt_tokens,
            completion_tokens=len(completion.token_ids),
        ),
        source_layer=resolved.source_layer,
        target_layer=resolved.target_layer,
        method=resolved.method,
        mode=req.mode,
        timings_ms=timings,
    )


def _as_service_error(err: Any) -> ServiceError:
    if isinstance(err, ServiceError):
        return err
    if isinstance(err, ValueError):  # a request the runtime cannot take (e.g. a text with no tokens)
        return InvalidRequestError(str(err))
    return ServiceError(f"generation failed: {type(err).__name__}")


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses=ERRORS,
    summary="Hand A's reading of `text` to B and let B continue after `prompt`",
)
async def post_generate(
    req: GenerateRequest, state: StateDep, engine: EngineDep, m: MetricsDep
) -> GenerateResponse | StreamingResponse:
    state.require_ready()
    check_length(state, text=req.text, prompt=req.prompt)
    if req.max_new_tokens > state.settings.max_new_tokens:
        raise InvalidRequestError(
            f"max_new_tokens is {req.max_new_tokens}; this server allows at most {state.settings.max_new_tokens}"
        )
    if req.mode == "last_token" and not req.prompt:
        raise InvalidRequestError(
            "mode 'last_token' needs a prompt: B reads it and A's state replaces its last token's"
        )
    resolved = await run_in_threadpool(state.resolve, req.source, req.target, req.mode, req.layer, req.method)
    job = _job(state, req, resolved)
    engine.submit(job)

    if not req.stream:
        while True:
            kind, payload = await job.events.get()
            if kind == "error":
                raise _as_service_error(payload)
            if kind == "done":
                result = _response(req, resolved, payload)
                m.tokens.labels("completion").inc(result.usage.completion_tokens)
                m.tokens.labels("target_prompt").inc(result.usage.target_prompt_tokens)
                return result

    async def events() -> AsyncIterator[str]:
        while True:
            kind, payload = await job.events.get()
            if kind == "delta":
                yield f"data: {json.dumps({'delta': payload.delta, 'token_id': payload.token_id})}\n\n"
            elif kind == "done":
                result = _response(req, resolved, payload)
                m.tokens.labels("completion").inc(result.usage.completion_tokens)
                yield f"event: done\ndata: {result.model_dump_json()}\n\n"
                return
            else:
                err = _as_service_error(payload)
                yield f"event: error\ndata: {json.dumps({'error': err.kind, 'detail': err.detail})}\n\n"
                return

    return StreamingResponse(events(), media_type="text/event-stream")
