"""Domain errors, defined once and mapped to HTTP responses in one place (``install``)."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("interlingua")


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


class DeadlineError(ServiceError):
    """The server's own limit on a request's time (INTERLINGUA_REQUEST_TIMEOUT_S) passed: the server's doing."""

    status, kind = 504, "timeout"


class ClientDeadlineError(ServiceError):
    """The deadline the client set (``timeout_s``) passed: the client's choice, so a client error, not a 5xx that
    clients, proxies and monitors would take for a server fault."""

    status, kind = 408, "timeout"


# Error kinds of the HTTP statuses the framework raises by itself (unknown routes, wrong methods, unreadable bodies).
HTTP_KINDS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large", 422: "invalid_request"}


def error_response(status: int, kind: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Every error body: ``{"error": kind, "detail": text}``."""
    return JSONResponse({"error": kind, "detail": detail}, status_code=status, headers=headers)


def describe_validation(errors: list[dict[str, Any]]) -> str:
    """Pydantic's errors as one line naming each field and the problem, never echoing the value (which may be NaN
    or a lone surrogate that JSON cannot carry)."""
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        msg = str(e.get("msg", "invalid"))
        if e.get("type") == "extra_forbidden":
            msg = "unknown field (check its spelling; see /docs for the fields this endpoint takes)"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts) or "invalid request"


def install(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, err: ServiceError) -> JSONResponse:
        return error_response(err.status, err.kind, err.detail, err.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", describe_validation(list(err.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = HTTP_KINDS.get(err.status_code, "http_error")
        return error_response(err.status_code, kind, str(err.detail), dict(err.headers or {}) or None)

    @app.exception_handler(Exception)
    async def _internal(_: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal", f"internal error ({type(err).__name__}); see the server log")
