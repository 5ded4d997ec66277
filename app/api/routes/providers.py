"""Administrators' view of the LLM providers' circuit breakers (model health)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter
from pydantic import BaseModel

from app.api.deps import ServicesDep
from chains.providers.health import BreakerSnapshot

router = APIRouter(prefix="/api/v1/ai/providers", tags=["operations"])


class WindowOut(BaseModel):
    calls: int
    errors: int
    timeouts: int
    slow_calls: int


class ProviderHealthOut(BaseModel):
    provider: str
    position: int  # in the failover order, from 0
    state: str  # closed, open, half_open; `local` is always closed
    window: WindowOut
    opened_at: datetime | None = None
    retry_at: datetime | None = None  # when an open breaker lets a trial call through


class ProvidersHealthOut(BaseModel):
    breakers_enabled: bool
    window_s: float
    min_calls: int
    providers: list[ProviderHealthOut]


def _at(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def _out(position: int, snapshot: BreakerSnapshot) -> ProviderHealthOut:
    return ProviderHealthOut(
        provider=snapshot.provider, position=position, state=str(snapshot.state),
        window=WindowOut(**snapshot.stats.as_dict()),
        opened_at=_at(snapshot.opened_at), retry_at=_at(snapshot.retry_at),
    )


@router.get("/health")
async def providers_health(services: ServicesDep) -> ProvidersHealthOut:
    """Each configured provider's breaker state and its current window (shared by all
    tenants: provider health is not a tenant's business, so any tenant's admin sees it)."""
    settings = services.settings
    names = settings.llm_providers
    snapshots = {s.provider: s for s in await services.breakers.snapshots(names)} if services.breakers else {}
    providers = []
    for position, name in enumerate(names):
        snapshot = snapshots.get(name)
        if snapshot is None:  # `local`, or breakers turned off
            providers.append(ProviderHealthOut(provider=name, position=position, state="closed",
                                               window=WindowOut(calls=0, errors=0, timeouts=0, slow_calls=0)))
        else:
            providers.append(_out(position, snapshot))
    return ProvidersHealthOut(
        breakers_enabled=services.breakers is not None, window_s=settings.llm_breaker_window_s,
        min_calls=settings.llm_breaker_min_calls, providers=providers,
    )

