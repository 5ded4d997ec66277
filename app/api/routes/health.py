"""Liveness and readiness for load balancers: open, and cheap."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import ServicesDep
from app.store.database import ping

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is up and serving."""
    return {"status": "ok"}


@router.get("/ready", response_model=None)
async def ready(services: ServicesDep) -> dict[str, object] | JSONResponse:
    """Every configured backing service answers; 503 otherwise."""
    checks: dict[str, str] = {}
    try:
        await ping(services.engine)
        checks["database"] = "ok"
    except Exception as error:  # noqa: BLE001 - any failure means not ready
        checks["database"] = f"unavailable: {type(error).__name__}"
    if services.redis is not None:
        try:
            await services.redis.ping()
            checks["redis"] = "ok"
        except Exception as error:  # noqa: BLE001
            checks["redis"] = f"unavailable: {type(error).__name__}"
    healthy = all(value == "ok" for value in checks.values())
    body = {"status": "ready" if healthy else "unavailable", "checks": checks}
    return body if healthy else JSONResponse(body, status_code=503)
