"""Prometheus exposition of the process-wide registry."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response)
async def metrics() -> Response:
    """Prometheus text format: queue depth, latencies, cache, tokens, sessions."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
