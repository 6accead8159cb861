"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import StateDep

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness: 200 while the process runs")
def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    summary="Readiness: 200 once models and maps are loaded, else 503 with what is missing",
    responses={503: {"description": "still loading, or loading failed (same body as 200)"}},
)
def ready(state: StateDep) -> JSONResponse:
    body = {
        "status": state.status,
        "detail": state.detail,
        "models": sorted(state.models),
        "missing_models": sorted(set(state.settings.model_specs) - set(state.models)),
        "maps_served": len(state.served),
        "refused_maps": state.refused,
    }
    return JSONResponse(body, status_code=200 if state.status == "ready" else 503)
