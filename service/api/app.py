"""The FastAPI application factory: lifespan loading, routers, error mapping, request metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api import errors
from service.api.engine import Engine
from service.api.metrics import Metrics
from service.api.planner import RequestPlanner
from service.api.routes import generate, health, metrics, models, translate
from service.api.state import ServiceState
from service.settings import Settings

DESCRIPTION = """Hand what one language model has read to another.

Model A encodes a text; its hidden states at a layer are mapped by a calibrated alignment map into model B's hidden
space; B continues from them. `POST /translate` returns the mapped states with diagnostics, `POST /generate` lets B
continue (modes `replace`, `full`, `last_token`, `embeds`, and `native` as the baseline)."""


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413 before they are parsed: at once from Content-Length, or
    while reading a chunked body."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            response = errors.error_response(413, "too_large", self._detail(int(declared)))
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise StarletteHTTPException(413, self._detail(seen))
            return message

        await self.app(scope, limited, send)

    def _detail(self, size: int) -> str:
        return (
            f"request body has {size} bytes or more; this server accepts at most {self.limit} "
            "(INTERLINGUA_MAX_BODY_BYTES)"
        )


def create_app(
    settings: Settings | None = None,
    state: ServiceState | None = None,
    workers: int = 1,
    planner: RequestPlanner | None = None,
) -> FastAPI:
    """Build the app. ``state`` may be given already loaded (tests); otherwise the lifespan loads it in the
    background, so /health answers at once and /ready reports progress. ``workers``: threads taking work off the
    queue (one where the models run in this process). ``planner`` plans requests against the state (default: the
    single-process server's ``RequestPlanner``)."""
    settings = settings or Settings()
    service = state or ServiceState(settings)
    engine = Engine(settings.queue_size, settings.max_batch, workers=workers)
    meter = Metrics(lambda: engine.depth)
    engine.on_stop = lambda reason: meter.stopped.labels(reason).inc()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        if service.status != "ready":
            threading.Thread(target=service.load, name="interlingua-loader", daemon=True).start()
        yield
        engine.stop(settings.shutdown_grace_s)
        service.close()

    app = FastAPI(title="interlingua", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.service, app.state.engine, app.state.metrics = service, engine, meter
    app.state.planner = planner or RequestPlanner(service)
    errors.install(app)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    @app.middleware("http")
    async def record(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        meter.observe(route, response.status_code, time.perf_counter() - start)
        return response

    for router in (health.router, models.router, translate.router, generate.router, metrics.router):
        app.include_router(router)
    return app
