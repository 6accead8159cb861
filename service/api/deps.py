"""Dependencies shared by the routers, as ``Annotated`` aliases."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from service.api.engine import Engine
from service.api.errors import UnauthorizedError
from service.api.metrics import Metrics
from service.api.state import ServiceState


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def require_key(request: Request) -> None:
    """With an API key configured, require ``Authorization: Bearer <key>`` (compared in constant time)."""
    key = request.app.state.service.settings.api_key
    if not key:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise UnauthorizedError("missing or wrong API key: send 'Authorization: Bearer <key>'")


StateDep = Annotated[ServiceState, Depends(get_state)]
EngineDep = Annotated[Engine, Depends(get_engine)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
Authorized = Depends(require_key)
