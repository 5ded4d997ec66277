"""Background runs (#16): start a chain's run that outlives its client, read it, list
them, cancel it. Watching a run live is push transport: `app.api.streaming`.

A run id of another tenant answers 404 like an unknown one, and is recorded as a
cross-tenant attempt (`app.core.cross_tenant`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Header, Path, Query, Request, Response, status
from starlette.requests import HTTPConnection
from pydantic import BaseModel, ConfigDict, Field

from app.api.access import API_PREFIX, CHAIN_POLICIES, MANAGERS, watch_chain_request
from app.api.deps import CurrentPrincipal, WorkflowsDep
from app.core.auth import Principal
from app.core.errors import Forbidden, NotFound, Unprocessable
from app.core.security_log import security_log_of
from app.core.workflows import WorkflowRunner
from app.store.workflow_runs import WorkflowRun

router = APIRouter(prefix="/api/v1/ai/workflows", tags=["background runs"])

RUN_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
WorkflowId = Annotated[str, Path(pattern=RUN_ID_PATTERN)]
Status = Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]
ChainName = Literal["realtime/interactions", "scoring/leads", "insights/chat"]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class WorkflowIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    chain: ChainName = Field(description="The chain, by its path under /api/v1/ai/.")
    input: dict[str, Any] = Field(description="The chain's input, exactly as its /invoke takes it.")
    retry: bool = Field(default=False, description="Re-queue once on another replica if the one running it dies.")


class WorkflowPage(BaseModel):
    runs: list[dict[str, Any]]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next (older) page; null on the last.")


def may_run(principal: Principal, chain: str) -> bool:
    return principal.has_any_role(CHAIN_POLICIES[API_PREFIX + chain])


def ensure_may_run(conn: HTTPConnection, principal: Principal, chain: str) -> None:
    """The roles that may call the chain through LangServe may run it in the background,
    and read or watch such runs: a run's input and output are the chain's."""
    if not may_run(principal, chain):
        roles = sorted(CHAIN_POLICIES[API_PREFIX + chain])
        security_log_of(conn).record_for(conn, "forbidden_role", principal, {
            "required": roles, "roles": sorted(principal.roles), "chain": chain})
        raise Forbidden(f"runs of {chain} need one of the roles {roles}")


def ensure_may_cancel(request: Request, principal: Principal, run: WorkflowRun) -> None:
    """Whoever started the run, or a manager or admin of the tenant."""
    ensure_may_run(request, principal, run.chain)
    if run.user_id != principal.user_id and not principal.has_any_role(MANAGERS):
        security_log_of(request).record_for(request, "forbidden_role", principal, {
            "required": sorted(MANAGERS), "roles": sorted(principal.roles), "reason": "another user's run"})
        raise Forbidden("only the user who started a run, a manager or an admin may cancel it")


async def run_of(request: Request, workflows: WorkflowRunner, principal: Principal, run_id: str) -> WorkflowRun:
    """The caller's run, or 404; a miss is checked against other tenants off the request path."""
    try:
        return await workflows.get(principal, run_id)
    except NotFound:
        request.app.state.services.cross_tenant.notice_missing(request, principal, "workflow_run", run_id)
        raise


@router.post("", status_code=status.HTTP_202_ACCEPTED)
async def start_workflow(
    body: WorkflowIn, request: Request, principal: CurrentPrincipal, workflows: WorkflowsDep, response: Response,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255,
                                                  pattern=r"^[\x21-\x7e]+$")] = None,
) -> dict[str, Any]:
    """Starts a background run and answers at once. The same `Idempotency-Key` with the
    same body returns the same run (`Idempotent-Replayed: true`); with another body, 422."""
    ensure_may_run(request, principal, body.chain)
    watch_chain_request(request, API_PREFIX + body.chain + "/invoke", {"input": body.input}, principal)
    run, created = await workflows.start(principal, body.chain, body.input, retry=body.retry,
                                         idempotency_key=idempotency_key)
    response.headers["Location"] = f"/api/v1/ai/workflows/{run.run_id}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return run.public()


@router.get("")
async def list_workflows(
    principal: CurrentPrincipal, workflows: WorkflowsDep,
    status_filter: Annotated[Status | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=64, pattern=r"^[0-9]{1,20}\.[0-9a-f\-]{36}$")] = None,
) -> WorkflowPage:
    """The tenant's runs of the chains the caller may run, newest first, without inputs
    and outputs (read one for those)."""
    before = None
    if cursor is not None:
        micros, _, run_id = cursor.partition(".")
        before = (_from_micros(int(micros)), run_id)
    chains = [chain for chain in get_args(ChainName) if may_run(principal, chain)]
    runs = await workflows.runs.page(principal.tenant_id, chains=chains, status=status_filter, limit=limit,
                                     before=before)
    last = runs[-1] if len(runs) == limit else None
    return WorkflowPage(
        runs=[run.public(full=False) for run in runs],
        next_cursor=f"{_micros(last)}.{last.run_id}" if last is not None else None,
    )


@router.get("/{workflow_id}")
async def read_workflow(
    workflow_id: WorkflowId, request: Request, principal: CurrentPrincipal, workflows: WorkflowsDep
) -> dict[str, Any]:
    run = await run_of(request, workflows, principal, workflow_id)
    ensure_may_run(request, principal, run.chain)
    return run.public()


@router.delete("/{workflow_id}")
async def cancel_workflow(
    workflow_id: WorkflowId, request: Request, principal: CurrentPrincipal, workflows: WorkflowsDep,
    response: Response,
) -> dict[str, Any]:
    """Cancels the run on whichever replica runs it; answers once it is final (200), or
    202 if it is still stopping after a second. A final run is left as it is."""
    ensure_may_cancel(request, principal, await run_of(request, workflows, principal, workflow_id))
    run = await workflows.cancel(principal, workflow_id)
    if not run.final:
        response.status_code = status.HTTP_202_ACCEPTED
    return run.public()


def _micros(run: WorkflowRun) -> int:
    return (run.created_at - _EPOCH) // timedelta(microseconds=1)


def _from_micros(micros: int) -> datetime:
    try:
        return _EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        raise Unprocessable("cursor is not one this API gave", loc=("query", "cursor")) from None
