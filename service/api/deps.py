"""Dependencies shared by the routers, as ``Annotated`` aliases."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.engine import Engine
from service.api.errors import UnauthorizedError
from service.api.metrics import Metrics
from service.api.planner import RequestPlanner
from service.api.state import ServiceState


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


def get_planner(request: Request) -> RequestPlanner:
    return request.app.state.planner


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


# Declared in OpenAPI as a bearer scheme; checked here (not by the scheme) so a server without a key needs none.
bearer = HTTPBearer(auto_error=False, description="the server's INTERLINGUA_API_KEY, where one is set")


def require_key(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    """With an API key configured, require ``Authorization: Bearer <key>`` (compared in constant time)."""
    key = request.app.state.service.settings.api_key
    if not key:
        return
    given = "" if credentials is None else credentials.credentials
    if not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise UnauthorizedError("missing or wrong API key: send 'Authorization: Bearer <key>'")


StateDep = Annotated[ServiceState, Depends(get_state)]
PlannerDep = Annotated[RequestPlanner, Depends(get_planner)]
EngineDep = Annotated[Engine, Depends(get_engine)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
Authorized = Depends(require_key)
