"""The tenant's knowledge base: documents the insights chat answers from."""

from __future__ import annotations

from fastapi import APIRouter, status
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import CurrentPrincipal, ServicesDep

router = APIRouter(prefix="/api/v1/ai/insights", tags=["insights"])


class DocumentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    customer_id: str | None = Field(
        default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$"
    )
    title: str = Field(min_length=1, max_length=300)
    text: str = Field(min_length=1, max_length=100_000)


class DocumentCreated(BaseModel):
    document_id: str
    customer_id: str | None
    title: str
    chunks: int


@router.post("/documents", status_code=status.HTTP_201_CREATED)
async def create_document(
    document_in: DocumentCreate, principal: CurrentPrincipal, services: ServicesDep
) -> DocumentCreated:
    """Stores a document in the caller's tenant knowledge base."""
    stored = await services.knowledge.add_document(
        tenant_id=principal.tenant_id,
        user_id=principal.user_id,
        customer_id=document_in.customer_id,
        title=document_in.title,
        text=document_in.text,
    )
    return DocumentCreated(
        document_id=stored.document_id,
        customer_id=stored.customer_id,
        title=stored.title,
        chunks=stored.chunks,
    )
