"""Every deliberate error becomes one HTTP answer here, in FastAPI's `{"detail": ...}` form."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.core.errors import AppError, RateLimited, Unauthenticated


def error_headers(error: AppError) -> dict[str, str]:
    """Headers a refusal carries so clients know how to react (RFC 6750, RFC 9110)."""
    if isinstance(error, Unauthenticated):
        return {"WWW-Authenticate": 'Bearer error="invalid_token"'}
    if isinstance(error, RateLimited):
        return {"Retry-After": str(error.retry_after_s)}
    return {}


def error_response(error: AppError) -> JSONResponse:
    return JSONResponse(
        {"detail": error.detail}, status_code=error.status_code, headers=error_headers(error)
    )


async def app_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return error_response(exc)


def add_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, app_error_handler)
