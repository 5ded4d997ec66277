"""Every error becomes one answer here: HTTP JSON before a response starts, and a
structured SSE `error` event (then `end`) once a stream is under way.

The same `describe_error` serves both, so a client sees the same `code` and
`retryable` whether an outage hit before or during its stream.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from pydantic import ValidationError
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError as DatabaseUnavailable
from sqlalchemy.exc import TimeoutError as DatabaseTimeout

from app.core.errors import AppError, RateLimited, Unauthenticated, Unprocessable
from app.core.security_log import security_log_of
from app.store.audit import AuditUnavailable
from app.store.knowledge import DocumentNotFound
from chains.context import MissingIdentity
from chains.providers.router import ProviderError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """`status_code` and `message` keep LangServe clients raising as they always did."""

    status_code: int
    code: str
    message: str
    retryable: bool


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def describe_error(error: BaseException) -> ErrorInfo:
    if isinstance(error, AppError):
        return ErrorInfo(error.status_code, _snake(type(error).__name__), error.detail, error.retryable)
    if isinstance(error, ProviderError):
        return ErrorInfo(503, error.code, str(error), error.retryable)
    if isinstance(error, MissingIdentity):
        return ErrorInfo(401, "unauthenticated", "run has no verified identity", False)
    if isinstance(error, AuditUnavailable):
        return ErrorInfo(503, "audit_unavailable", "the audit trail cannot be written", True)
    if isinstance(error, DocumentNotFound):
        return ErrorInfo(404, "document_not_found", "no document with this id in your tenant", False)
    if isinstance(error, RedisError):
        # Only work that must not half-succeed lets it through (a privacy erasure):
        # lookups degrade to misses instead. Running it again finishes it.
        return ErrorInfo(503, "redis_unavailable", "the shared store cannot be reached: retry shortly", True)
    if isinstance(error, DatabaseTimeout):
        return ErrorInfo(503, "database_busy", "every database connection is busy: retry shortly", True)
    if isinstance(error, DatabaseUnavailable):
        # Unreachable, or SQLite's write lock held past its busy timeout: both pass.
        return ErrorInfo(503, "database_unavailable", "the database cannot take this now: retry shortly", True)
    if isinstance(error, (TimeoutError,)):
        return ErrorInfo(504, "timeout", "the run took too long", True)
    # Unknown failures keep their details in the server log, never in the response.
    return ErrorInfo(500, "internal_error", "Internal Server Error", False)


def error_payload(error: BaseException) -> dict[str, object]:
    return asdict(describe_error(error))


def error_headers(error: AppError) -> dict[str, str]:
    """Headers a refusal carries so clients know how to react (RFC 6750, RFC 9110)."""
    if isinstance(error, Unauthenticated):
        return {"WWW-Authenticate": 'Bearer error="invalid_token"'}
    if isinstance(error, RateLimited):
        return {"Retry-After": str(error.retry_after_s)}
    return {}


def error_response(error: AppError) -> JSONResponse:
    if isinstance(error, Unprocessable):
        return validation_response([{"loc": list(error.loc), "msg": error.detail, "type": "value_error"}])
    return JSONResponse(
        {"detail": error.detail}, status_code=error.status_code, headers=error_headers(error)
    )


async def app_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Every HTTP 401 raised in a route or dependency is answered here, so it is
    recorded here (tenant-less: nothing in a refused token is trusted). The sign-in
    middleware and WebSocket handlers answer their own and record them themselves."""
    assert isinstance(exc, AppError)
    if isinstance(exc, Unauthenticated):
        security_log_of(request).token_refused(request, exc)
    return error_response(exc)


async def run_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Failures raised before a response starts: provider outages and identity faults
    of `invoke`/`batch` runs, a busy database, a document not in the caller's tenant."""
    info = describe_error(exc)
    log.warning("request failed: %r", exc)
    headers = {"Retry-After": "1"} if info.retryable and info.status_code == 503 else None
    return JSONResponse({"detail": info.message, "code": info.code, "retryable": info.retryable},
                        status_code=info.status_code, headers=headers)


def _encodable(value: Any) -> Any:
    """A 422 echoes what the client sent; make sure that can be written as JSON: no
    non-finite floats, no lone surrogates (either would turn the 422 into a 500)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {_encodable(k): _encodable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encodable(v) for v in value]
    return value


def validation_response(errors: list[Any]) -> JSONResponse:
    return JSONResponse({"detail": _encodable(jsonable_encoder(errors))}, status_code=422)


async def batch_validation_handler(request: Request, exc: Exception) -> JSONResponse:
    """LangServe's `batch` validates each input outside its own error translation
    (langserve/api_handler.py, `batch`), so a bad input escapes as a raw pydantic
    ValidationError. Only there is it the client's fault; anywhere else it is ours."""
    assert isinstance(exc, ValidationError)
    if not request.url.path.endswith("/batch"):
        raise exc
    return validation_response(exc.errors(include_url=False, include_context=False))


async def request_validation_handler(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 shape for every validation error, LangServe's included: it raises
    `RequestValidationError(errors=["Invalid JSON body"])` with bare strings."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        error if isinstance(error, dict) else {"loc": ["body"], "msg": str(error), "type": "value_error"}
        for error in exc.errors()
    ]
    return validation_response(errors)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """LangServe raises `HTTPException(422, "<sentence>")`; 422 bodies keep one shape."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 422 and isinstance(exc.detail, str):
        error = {"loc": ["body"], "msg": exc.detail, "type": "value_error"}
        return JSONResponse({"detail": [error]}, status_code=422)
    return await http_exception_handler(request, exc)


def add_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, app_error_handler)
    app.add_exception_handler(RequestValidationError, request_validation_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(ValidationError, batch_validation_handler)
    app.add_exception_handler(ProviderError, run_error_handler)
    app.add_exception_handler(MissingIdentity, run_error_handler)
    app.add_exception_handler(AuditUnavailable, run_error_handler)
    app.add_exception_handler(DatabaseTimeout, run_error_handler)
    app.add_exception_handler(DatabaseUnavailable, run_error_handler)
    app.add_exception_handler(DocumentNotFound, run_error_handler)
    app.add_exception_handler(RedisError, run_error_handler)
