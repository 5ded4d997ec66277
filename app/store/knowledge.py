"""The tenant's knowledge base: documents, their chunks and embedding search.

Search scores chunks of the caller's tenant only (the SQL filters on tenant_id) and
of the asked-about customer plus tenant-wide documents (customer_id NULL). Every read
and write names its tenant: a document id from another tenant is simply not found.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.store.database import document_chunks, documents, finishes_once_started
from chains.embeddings import embed, embed_one
from chains.ports import Passage
from chains.text import split_sentences

CHUNK_MAX_CHARS = 700


class DocumentNotFound(LookupError):
    """No document with this id in the caller's tenant (whether it exists elsewhere is
    not the caller's business)."""


def chunk_text(text: str, max_chars: int = CHUNK_MAX_CHARS) -> list[str]:
    """Sentence-aligned chunks, so a cited passage never starts mid-sentence."""
    chunks: list[str] = []
    current = ""
    for sentence in split_sentences(text) or [text]:
        if current and len(current) + len(sentence) + 1 > max_chars:
            chunks.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}".strip()
    if current:
        chunks.append(current)
    return chunks


@dataclass(frozen=True, slots=True)
class StoredDocument:
    document_id: str
    customer_id: str | None
    title: str
    chunks: int


@dataclass(frozen=True, slots=True)
class DocumentSummary:
    document_id: str
    customer_id: str | None
    title: str
    created_by: str
    created_at: datetime
    chunks: int


@dataclass(frozen=True, slots=True)
class Document(DocumentSummary):
    text: str


def _chunk_rows(tenant_id: str, document_id: str, customer_id: str | None, title: str, text: str) -> list[dict[str, Any]]:
    # The title is embedded with each chunk (it says what the chunk is about) but not
    # stored in it, so answers never quote a bare title as a fact.
    chunks = chunk_text(text)
    vectors = embed([f"{title}. {chunk}" for chunk in chunks])
    return [
        {
            "tenant_id": tenant_id,
            "document_id": document_id,
            "chunk_index": index,
            "customer_id": customer_id,
            "text": chunk,
            "embedding": vector.astype(np.float32).tobytes(),
        }
        for index, (chunk, vector) in enumerate(zip(chunks, vectors, strict=True))
    ]


def _this_document(table: Any, tenant_id: str, document_id: str) -> Any:
    return (table.c.tenant_id == tenant_id) & (table.c.document_id == document_id)


class KnowledgeBase:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @finishes_once_started
    async def add_document(
        self, *, tenant_id: str, user_id: str, customer_id: str | None, title: str, text: str
    ) -> StoredDocument:
        document_id = uuid.uuid4().hex
        rows = _chunk_rows(tenant_id, document_id, customer_id, title, text)
        async with self.engine.begin() as connection:
            await connection.execute(
                insert(documents).values(
                    tenant_id=tenant_id, document_id=document_id, customer_id=customer_id,
                    title=title, text=text, created_by=user_id,
                    created_at=datetime.now(UTC),  # microseconds: "newest first" holds within a second
                )
            )
            await connection.execute(insert(document_chunks), rows)
        return StoredDocument(document_id, customer_id, title, len(rows))

    @finishes_once_started
    async def replace_document(
        self, *, tenant_id: str, document_id: str, customer_id: str | None, title: str, text: str
    ) -> StoredDocument:
        """New title, text or customer; its chunks and vectors are rebuilt in the same
        transaction, so a search sees the old document or the new one, never a mix."""
        rows = _chunk_rows(tenant_id, document_id, customer_id, title, text)
        async with self.engine.begin() as connection:
            changed = await connection.execute(
                update(documents).where(_this_document(documents, tenant_id, document_id))
                .values(customer_id=customer_id, title=title, text=text)
            )
            if changed.rowcount == 0:
                raise DocumentNotFound(document_id)
            await connection.execute(delete(document_chunks).where(_this_document(document_chunks, tenant_id, document_id)))
            await connection.execute(insert(document_chunks), rows)
        return StoredDocument(document_id, customer_id, title, len(rows))

    @finishes_once_started
    async def delete_document(self, *, tenant_id: str, document_id: str) -> StoredDocument:
        async with self.engine.begin() as connection:
            found = await self._read(connection, tenant_id, document_id)
            await connection.execute(delete(document_chunks).where(_this_document(document_chunks, tenant_id, document_id)))
            await connection.execute(delete(documents).where(_this_document(documents, tenant_id, document_id)))
        return StoredDocument(found.document_id, found.customer_id, found.title, found.chunks)

    async def get_document(self, *, tenant_id: str, document_id: str) -> Document:
        async with self.engine.connect() as connection:
            return await self._read(connection, tenant_id, document_id)

    async def list_documents(
        self, *, tenant_id: str, customer_id: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[DocumentSummary]:
        statement = self._summaries().where(documents.c.tenant_id == tenant_id)
        if customer_id is not None:
            statement = statement.where(documents.c.customer_id == customer_id)
        statement = statement.order_by(documents.c.created_at.desc(), documents.c.document_id).limit(limit).offset(offset)
        async with self.engine.connect() as connection:
            rows = (await connection.execute(statement)).mappings().all()
        return [DocumentSummary(**row) for row in rows]

    @staticmethod
    def _summaries() -> Any:
        chunks = (
            select(func.count())
            .where((document_chunks.c.tenant_id == documents.c.tenant_id)
                   & (document_chunks.c.document_id == documents.c.document_id))
            .scalar_subquery()
        )
        return select(
            documents.c.document_id, documents.c.customer_id, documents.c.title, documents.c.created_by,
            documents.c.created_at, chunks.label("chunks"),
        )

    async def _read(self, connection: AsyncConnection, tenant_id: str, document_id: str) -> Document:
        statement = self._summaries().add_columns(documents.c.text).where(
            _this_document(documents, tenant_id, document_id)
        )
        row = (await connection.execute(statement)).mappings().first()
        if row is None:
            raise DocumentNotFound(document_id)
        return Document(**row)

    async def search(
        self, *, tenant_id: str, customer_id: str | None, query: str, k: int = 4
    ) -> list[Passage]:
        scope = document_chunks.c.tenant_id == tenant_id
        if customer_id is not None:
            scope = scope & or_(
                document_chunks.c.customer_id == customer_id,
                document_chunks.c.customer_id.is_(None),
            )
        statement = (
            select(
                document_chunks.c.document_id,
                document_chunks.c.customer_id,
                document_chunks.c.text,
                document_chunks.c.embedding,
                documents.c.title,
            )
            .join(
                documents,
                (documents.c.tenant_id == document_chunks.c.tenant_id)
                & (documents.c.document_id == document_chunks.c.document_id),
            )
            .where(scope)
        )
        async with self.engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
        if not rows:
            return []
        matrix = np.frombuffer(b"".join(row.embedding for row in rows), dtype=np.float32)
        similarity = matrix.reshape(len(rows), -1) @ embed_one(query)
        best_per_document: dict[str, Passage] = {}
        for index in np.argsort(-similarity):
            row = rows[int(index)]
            if row.document_id in best_per_document:
                continue
            best_per_document[row.document_id] = Passage(
                document_id=row.document_id,
                customer_id=row.customer_id,
                title=row.title,
                text=row.text,
                score=round(float(similarity[index]), 4),
            )
            if len(best_per_document) == k:
                break
        return list(best_per_document.values())
