"""The tenant's knowledge base: documents the insights chat answers from.

Every change is on the tenant's audit trail (`GET /api/v1/ai/security/events`, kinds
`document_created`, `document_updated`, `document_deleted`): a document changes what
the AI tells every rep, so who changed which one, and when, is kept.
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import datetime
from typing import Annotated, TypeVar

from fastapi import APIRouter, Path, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import CurrentPrincipal, ServicesDep
from app.core.auth import Principal
from app.core.services import Services
from app.store.knowledge import DocumentNotFound, StoredDocument

_T = TypeVar("_T")
from chains.schemas import CUSTOMER_ID_RULES

router = APIRouter(prefix="/api/v1/ai/insights", tags=["insights"])

DocumentId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")]


class DocumentIn(BaseModel):
    """A document to store, or the whole new version of one (`PUT` replaces title, text
    and customer; a tenant-wide document has no `customer_id`)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    customer_id: str | None = Field(default=None, **CUSTOMER_ID_RULES)
    title: str = Field(min_length=1, max_length=300)
    text: str = Field(min_length=1, max_length=100_000)


class DocumentStored(BaseModel):
    document_id: str
    customer_id: str | None
    title: str
    chunks: int


class DocumentListed(DocumentStored):
    created_by: str
    created_at: datetime


class DocumentRead(DocumentListed):
    text: str


async def _audit(services: Services, principal: Principal, kind: str, stored: StoredDocument) -> None:
    await services.audit.security_event(
        tenant_id=principal.tenant_id, user_id=principal.user_id, run_id=None, kind=kind,
        # Ids only: the audit trail outlives a customer's erasure, the title may name them.
        detail={"document_id": stored.document_id, "customer_id": stored.customer_id, "chunks": stored.chunks},
    )


async def _in_tenant(request: Request, services: Services, principal: Principal, document_id: str,
                     lookup: Awaitable[_T]) -> _T:
    """A document id the caller's tenant does not have may be another tenant's: that is
    checked after the 404 is answered (`app.core.cross_tenant`)."""
    try:
        return await lookup
    except DocumentNotFound:
        services.cross_tenant.notice_missing(request, principal, "document", document_id)
        raise


def _stored(stored: StoredDocument) -> DocumentStored:
    return DocumentStored(document_id=stored.document_id, customer_id=stored.customer_id,
                          title=stored.title, chunks=stored.chunks)


@router.post("/documents", status_code=status.HTTP_201_CREATED)
async def create_document(
    document_in: DocumentIn, principal: CurrentPrincipal, services: ServicesDep
) -> DocumentStored:
    """Stores a document in the caller's tenant knowledge base."""
    stored = await services.knowledge.add_document(
        tenant_id=principal.tenant_id, user_id=principal.user_id, customer_id=document_in.customer_id,
        title=document_in.title, text=document_in.text,
    )
    await _audit(services, principal, "document_created", stored)
    return _stored(stored)


@router.get("/documents")
async def list_documents(
    principal: CurrentPrincipal, services: ServicesDep,
    customer_id: Annotated[str | None, Query(**CUSTOMER_ID_RULES)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> list[DocumentListed]:
    """The tenant's documents, newest first; with `customer_id`, that customer's own only."""
    found = await services.knowledge.list_documents(
        tenant_id=principal.tenant_id, customer_id=customer_id, limit=limit, offset=offset
    )
    return [DocumentListed.model_validate(document, from_attributes=True) for document in found]


@router.get("/documents/{document_id}")
async def read_document(
    document_id: DocumentId, request: Request, principal: CurrentPrincipal, services: ServicesDep
) -> DocumentRead:
    found = await _in_tenant(request, services, principal, document_id,
                             services.knowledge.get_document(tenant_id=principal.tenant_id, document_id=document_id))
    return DocumentRead.model_validate(found, from_attributes=True)


@router.put("/documents/{document_id}")
async def replace_document(
    document_id: DocumentId, document_in: DocumentIn, request: Request, principal: CurrentPrincipal,
    services: ServicesDep,
) -> DocumentStored:
    """Replaces the document; its passages are re-chunked and re-embedded at once, so the
    next question is answered from the new text."""
    stored = await _in_tenant(request, services, principal, document_id, services.knowledge.replace_document(
        tenant_id=principal.tenant_id, document_id=document_id, customer_id=document_in.customer_id,
        title=document_in.title, text=document_in.text,
    ))
    await _audit(services, principal, "document_updated", stored)
    return _stored(stored)


@router.delete("/documents/{document_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_document(
    document_id: DocumentId, request: Request, principal: CurrentPrincipal, services: ServicesDep
) -> None:
    stored = await _in_tenant(request, services, principal, document_id,
                              services.knowledge.delete_document(tenant_id=principal.tenant_id, document_id=document_id))
    await _audit(services, principal, "document_deleted", stored)
