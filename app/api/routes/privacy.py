"""Privacy requests (GDPR/CCPA): a customer's data exported or erased by the tenant's
admins, a whole tenant erased by an operator. Every one is on the audit trail."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.exceptions import RequestValidationError

from app.api.deps import CurrentPrincipal, CustomerIdPath, ServicesDep
from app.core.auth import TENANT_ID_PATTERN

router = APIRouter(prefix="/api/v1/ai/privacy", tags=["privacy"])

TenantIdPath = Annotated[str, Path(min_length=1, max_length=128, pattern=f"^{TENANT_ID_PATTERN.pattern}$")]


@router.get("/customers/{customer_id}/export")
async def export_customer(customer_id: CustomerIdPath, principal: CurrentPrincipal,
                          services: ServicesDep) -> dict[str, Any]:
    """Everything held about the customer in the caller's tenant, opened: documents,
    conversations, analysed interactions, lead scores and outcomes, cached analyses,
    replayable events."""
    return await services.privacy.export_customer(principal, customer_id)


@router.delete("/customers/{customer_id}")
async def erase_customer(customer_id: CustomerIdPath, principal: CurrentPrincipal,
                         services: ServicesDep) -> dict[str, Any]:
    """Erases the customer from every store; answers what was erased, per store. Safe to
    repeat (a second call erases nothing and says so)."""
    erased = await services.privacy.erase_customer(principal, customer_id)
    return {"customer_id": customer_id, "erased": erased}


@router.delete("/tenants/{tenant_id}")
async def erase_tenant(tenant_id: TenantIdPath, principal: CurrentPrincipal, services: ServicesDep,
                       confirm: Annotated[str, Query(description="the tenant id again: erasure cannot be undone")]
                       ) -> dict[str, Any]:
    """Erases a whole tenant and destroys its data keys (an operator's act, not a tenant's)."""
    if confirm != tenant_id:
        raise RequestValidationError([{"loc": ["query", "confirm"], "msg": "must repeat the tenant id",
                                       "type": "value_error"}])
    erased = await services.privacy.erase_tenant(principal, tenant_id)
    return {"tenant_id": tenant_id, "erased": erased}
