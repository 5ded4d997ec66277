"""A tenant admin's view of their own AI usage, runs and security events; an operator's
view of every tenant's security events and the tenant-less ones (refused tokens)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import AfterValidator, AwareDatetime, BaseModel, Field

from app.api.deps import CurrentPrincipal, ServicesDep
from app.core.auth import TENANT_ID_PATTERN
from app.store.audit import utcnow
from app.store.audit_chain import TENANTLESS

router = APIRouter(prefix="/api/v1/ai", tags=["usage and audit"])


class UsageLine(BaseModel):
    feature: str
    model: str | None
    provider: str | None
    outcome: str
    runs: int
    tokens_in: int
    tokens_out: int
    cost_usd: float
    degraded: int
    latency_ms_avg: float | None


class UsageReport(BaseModel):
    tenant_id: str
    since: datetime
    until: datetime
    lines: list[UsageLine]
    total_runs: int
    total_tokens_in: int
    total_tokens_out: int
    total_cost_usd: float


class RunRecord(BaseModel):
    run_id: str
    user_id: str
    chain: str
    endpoint: str | None
    status: str
    provider: str | None
    model: str | None
    tokens_in: int
    tokens_out: int
    cost_usd: float
    latency_ms: float | None
    degraded: bool
    degraded_reason: str | None
    error_code: str | None
    started_at: datetime
    finished_at: datetime | None


class SecurityEventRecord(BaseModel):
    id: int
    user_id: str
    run_id: str | None
    kind: str
    detail: dict[str, Any]
    created_at: datetime
    route: str | None = None
    client_address: str | None = None


class OperatorSecurityEventRecord(SecurityEventRecord):
    tenant_id: str = Field(description=f"The tenant; {TENANTLESS!r} when no tenant was verified (a refused token).")


EventKind = Annotated[str | None, Query(min_length=1, max_length=64, pattern=r"^[a-z_]+$")]
REPORTABLE = (datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC))


def _reportable(value: datetime) -> datetime:
    """A time the report can be asked about, in UTC. Near the ends of the calendar a
    time has no UTC form (0001-01-01 at +14:00) or no 30 days before it: refused, not
    an OverflowError answered 500."""
    if not REPORTABLE[0] <= value <= REPORTABLE[1]:
        raise ValueError(f"must lie between {REPORTABLE[0]:%Y-%m-%d} and {REPORTABLE[1]:%Y-%m-%d}")
    return value.astimezone(UTC)


ReportTime = Annotated[AwareDatetime, AfterValidator(_reportable)]


@router.get("/usage")
async def read_usage(
    principal: CurrentPrincipal,
    services: ServicesDep,
    since: ReportTime | None = None,
    until: ReportTime | None = None,
) -> UsageReport:
    """The caller's tenant usage by feature, model and outcome (default: last 30 days)."""
    until = until or utcnow() + timedelta(seconds=1)
    since = since or until - timedelta(days=30)
    rows = await services.audit.usage(principal.tenant_id, since, until)
    lines = [
        UsageLine(
            feature=row["chain"], model=row["model"], provider=row["provider"],
            outcome=row["effective_status"], runs=row["runs"], tokens_in=row["tokens_in"] or 0,
            tokens_out=row["tokens_out"] or 0, cost_usd=round(row["cost_usd"] or 0.0, 8),
            degraded=row["degraded"] or 0, latency_ms_avg=row["latency_ms_avg"],
        )
        for row in rows
    ]
    return UsageReport(
        tenant_id=principal.tenant_id, since=since, until=until, lines=lines,
        total_runs=sum(line.runs for line in lines),
        total_tokens_in=sum(line.tokens_in for line in lines),
        total_tokens_out=sum(line.tokens_out for line in lines),
        total_cost_usd=round(sum(line.cost_usd for line in lines), 8),
    )


@router.get("/usage/runs")
async def read_recent_runs(
    principal: CurrentPrincipal, services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[RunRecord]:
    """The caller's tenant's most recent AI runs, newest first."""
    return [RunRecord(**row) for row in await services.audit.recent_runs(principal.tenant_id, limit)]


@router.get("/security/events")
async def read_security_events(
    principal: CurrentPrincipal, services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    kind: EventKind = None,
) -> list[SecurityEventRecord]:
    """The caller's tenant's security events, newest first: flagged inputs (prompt
    injection), forbidden roles, identity overrides, document changes. Ids reached for in
    another tenant are the operators' (`app.core.cross_tenant`)."""
    rows = await services.audit.recent_security_events(principal.tenant_id, limit, kind=kind)
    return [SecurityEventRecord(**row) for row in rows]


@router.get("/security/events/all")
async def read_all_security_events(
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    kind: EventKind = None,
    tenant_id: Annotated[
        str | None, Query(max_length=128, pattern=f"^(?:{TENANT_ID_PATTERN.pattern}|{TENANTLESS})$")
    ] = None,
) -> list[OperatorSecurityEventRecord]:
    """Operators only: every tenant's security events and the tenant-less ones (refused
    tokens), newest first; `tenant_id` narrows to one tenant (`-`: the tenant-less)."""
    rows = await services.audit.recent_security_events(tenant_id, limit, kind=kind, every_tenant=tenant_id is None)
    return [OperatorSecurityEventRecord(**row) for row in rows]
