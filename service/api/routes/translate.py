"""POST /translate: project A's states for a text into B's space, with diagnostics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from service.api.deps import Authorized, EngineDep, MetricsDep, PlannerDep, StateDep
from service.api.errors import InvalidRequestError, TooLargeError
from service.api.schemas import (
    ErrorBody,
    TranslateRequest,
    TranslateResponse,
)
from service.api.state import ServiceState

router = APIRouter(tags=["translate"], dependencies=[Authorized])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 408, 413, 422, 503, 504)
}


def check_length(state: ServiceState, **texts: str) -> None:
    limit = state.settings.max_text_chars
    for name, text in texts.items():
        if len(text) > limit:
            raise TooLargeError(f"{name} has {len(text)} characters; this server accepts at most {limit}")


@router.post(
    "/translate",
    response_model=TranslateResponse,
    responses=ERRORS,
    summary="Map A's hidden states for a text into B's space",
)
async def post_translate(
    req: TranslateRequest, state: StateDep, planner: PlannerDep, engine: EngineDep, m: MetricsDep
) -> TranslateResponse:
    state.require_ready()
    check_length(state, text=req.text)
    # Resolved before queueing, so unknown models or maps answer 404 without waiting for the worker.
    resolved = await run_in_threadpool(planner.resolve, req.source, req.target, None, req.layer, req.method)
    try:
        result: TranslateResponse = await engine.call(lambda: planner.translate(req, resolved))
    except ValueError as err:  # a text the models cannot take (no tokens, longer than their positions)
        raise InvalidRequestError(str(err)) from None
    m.tokens.labels("source").inc(len(result.tokens))
    return result
