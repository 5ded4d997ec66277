"""The tenant's knowledge base: documents, their chunks and embedding search.

Search scores chunks of the caller's tenant only (the SQL filters on tenant_id) and
of the asked-about customer plus tenant-wide documents (customer_id NULL).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np
from sqlalchemy import insert, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store.database import document_chunks, documents, finishes_once_started
from chains.embeddings import embed, embed_one
from chains.ports import Passage
from chains.text import split_sentences

CHUNK_MAX_CHARS = 700


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


class KnowledgeBase:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @finishes_once_started
    async def add_document(
        self, *, tenant_id: str, user_id: str, customer_id: str | None, title: str, text: str
    ) -> StoredDocument:
        document_id = uuid.uuid4().hex
        chunks = chunk_text(text)
        # The title is embedded with each chunk (it says what the chunk is about) but not
        # stored in it, so answers never quote a bare title as a fact.
        vectors = embed([f"{title}. {chunk}" for chunk in chunks])
        async with self.engine.begin() as connection:
            await connection.execute(
                insert(documents).values(
                    tenant_id=tenant_id,
                    document_id=document_id,
                    customer_id=customer_id,
                    title=title,
                    text=text,
                    created_by=user_id,
                )
            )
            await connection.execute(
                insert(document_chunks),
                [
                    {
                        "tenant_id": tenant_id,
                        "document_id": document_id,
                        "chunk_index": index,
                        "customer_id": customer_id,
                        "text": chunk,
                        "embedding": vector.astype(np.float32).tobytes(),
                    }
                    for index, (chunk, vector) in enumerate(zip(chunks, vectors, strict=True))
                ],
            )
        return StoredDocument(document_id, customer_id, title, len(chunks))

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
