"""Prometheus exposition of the process-wide registry."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import SettingsDep
from app.core.auth import token_from_connection
from app.core.errors import NotFound, Unauthenticated

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response)
async def metrics(request: Request, settings: SettingsDep) -> Response:
    """Prometheus text format; off with METRICS_ENABLED=false, behind METRICS_TOKEN if set."""
    if not settings.metrics_enabled:
        raise NotFound("metrics are disabled")
    if settings.metrics_token is not None:
        sent = token_from_connection(request, cookie_name="") or ""
        if not hmac.compare_digest(sent, settings.metrics_token.get_secret_value()):
            raise Unauthenticated("metrics need METRICS_TOKEN as a bearer token")
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
