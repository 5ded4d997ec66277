"""Errors the service raises on purpose; `app.api.errors` maps each to one HTTP answer."""

from __future__ import annotations


class AppError(Exception):
    """Base of every deliberate refusal: carries its HTTP status and a client-safe detail."""

    status_code = 500
    retryable = False

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Unauthenticated(AppError):
    """`reason` is a short code for the security log (`app.core.security_log`), never
    shown to the client beyond the detail it already gets."""

    status_code = 401

    def __init__(self, detail: str, reason: str = "invalid_token") -> None:
        super().__init__(detail)
        self.reason = reason


class Forbidden(AppError):
    status_code = 403


class NotFound(AppError):
    status_code = 404


class Unprocessable(AppError):
    """Well-formed input the service cannot act on (too few outcomes to compare models):
    answered in FastAPI's 422 shape, like every other 422, with `loc` naming the input."""

    status_code = 422

    def __init__(self, detail: str, loc: tuple[str, ...] = ("body",)) -> None:
        super().__init__(detail)
        self.loc = loc


class RequestTimeout(AppError):
    status_code = 408


class PayloadTooLarge(AppError):
    status_code = 413


class BatchTooLarge(AppError):
    """More inputs in one batch than a rate limit allows in a whole window."""

    status_code = 413


class RateLimited(AppError):
    status_code = 429
    retryable = True

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class ClientDisconnected(AppError):
    """The client went away; its run was cancelled. Nobody reads this answer."""

    status_code = 499
