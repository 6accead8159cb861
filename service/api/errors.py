"""Domain errors, defined once and mapped to HTTP responses in one place (``install``)."""

from __future__ import annotations

from typing import ClassVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class ServiceError(Exception):
    status = 500
    kind = "internal"
    headers: ClassVar[dict[str, str] | None] = None

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFoundError(ServiceError):
    status, kind = 404, "not_found"


class InvalidRequestError(ServiceError):
    status, kind = 422, "invalid_request"


class TooLargeError(ServiceError):
    status, kind = 413, "too_large"


class UnauthorizedError(ServiceError):
    status, kind = 401, "unauthorized"
    headers: ClassVar[dict[str, str] | None] = {"WWW-Authenticate": "Bearer"}


class BusyError(ServiceError):
    status, kind = 503, "busy"
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "1"}


class NotReadyError(ServiceError):
    status, kind = 503, "not_ready"
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "5"}


def install(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, err: ServiceError) -> JSONResponse:
        return JSONResponse({"error": err.kind, "detail": err.detail}, status_code=err.status, headers=err.headers)
