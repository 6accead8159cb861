"""POST /generate: encode with A, project, continue in B (JSON, or a token stream as server-sent events)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.api.deps import Authorized, EngineDep, MetricsDep, PlannerDep, StateDep
from service.api.engine import GenerateJob
from service.api.errors import InvalidRequestError, ServiceError
from service.api.metrics import Metrics
from service.api.planner import RequestPlanner, Resolved
from service.api.routes.translate import ERRORS, check_length
from service.api.schemas import GenerateRequest, GenerateResponse, Usage
from service.runtime.generate import Completion, SamplingParams
from service.runtime.modes import get_mode

router = APIRouter(tags=["generate"], dependencies=[Authorized])


def _job(planner: RequestPlanner, req: GenerateRequest, resolved: Resolved) -> GenerateJob:
    build = planner.handover(req, resolved)
    params = SamplingParams(
        max_new_tokens=req.max_new_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        seed=req.seed,
        stop=list(req.stop),
    )
    mode = resolved.handover_mode
    group = (req.target, mode.name, resolved.target_layer)
    backend = planner.backend(req.target, mode, resolved.target_layer or 0)
    limit = planner.state.settings.request_timeout_s
    client = req.timeout_s is not None and req.timeout_s < limit
    timeout = req.timeout_s if client else limit
    return GenerateJob(group, backend, build, params, asyncio.get_running_loop(), timeout, client)


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
        source_layers=resolved.source_layers,
        target_layer=resolved.target_layer,
        method=resolved.method,
        mode=resolved.handover_mode.name,
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
    req: GenerateRequest, state: StateDep, planner: PlannerDep, engine: EngineDep, m: MetricsDep
) -> GenerateResponse | StreamingResponse:
    state.require_ready()
    check_length(state, text=req.text, prompt=req.prompt)
    mode = get_mode(req.mode) if req.mode else planner.default_mode(req.source, req.target, req.layer)
    if req.max_new_tokens > state.settings.max_new_tokens:
        raise InvalidRequestError(
            f"max_new_tokens is {req.max_new_tokens}; this server allows at most {state.settings.max_new_tokens}"
        )
    if mode.needs_suffix and not req.prompt:
        raise InvalidRequestError(
            f"mode {mode.name!r} needs a prompt: B reads it and A's state replaces its last token's"
        )
    resolved = await run_in_threadpool(planner.resolve, req.source, req.target, mode, req.layer, req.method)
    job = _job(planner, req, resolved)
    engine.submit(job)

    if not req.stream:
        try:
            while True:
                kind, payload = await _next_event(job)
                if kind == "error":
                    raise _as_service_error(payload)
                if kind == "done":
                    result = _response(req, resolved, payload)
                    m.tokens.labels("completion").inc(result.usage.completion_tokens)
                    m.tokens.labels("target_prompt").inc(result.usage.target_prompt_tokens)
                    return result
        finally:
            job.abandon()  # a no-op once done; otherwise (client gone, deadline) the worker drops the job

    async def events() -> AsyncIterator[str]:
        try:
            async for item in _stream(job, req, resolved, m):
                yield item
        finally:
            job.abandon()  # the client disconnected (or the stream ended): stop decoding for it

    return StreamingResponse(events(), media_type="text/event-stream")


async def _next_event(job: GenerateJob) -> tuple[str, Any]:
    """The job's next event, or its deadline's error once the deadline has passed (the worker is told to drop it)."""
    remaining = None if job.deadline is None else max(0.0, job.deadline - time.monotonic())
    try:
        return await asyncio.wait_for(job.events.get(), timeout=remaining)
    except TimeoutError:
        job.should_stop()
        raise job.stopped or job.deadline_error() from None


async def _stream(job: GenerateJob, req: GenerateRequest, resolved: Resolved, m: Metrics) -> AsyncIterator[str]:
    while True:
        try:
            kind, payload = await _next_event(job)
        except ServiceError as stopped:
            kind, payload = "error", stopped
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
