"""The tenant's knowledge base: documents, their chunks and hybrid search over them.

Search uses one in-memory `RetrievalIndex` per tenant (built from that tenant's rows
only), scoped to the asked-about customer plus tenant-wide documents (customer_id
NULL). Every write bumps the tenant's revision in the same transaction; a search reads
that one row and rebuilds the index when it moved, so every replica answers from the
current documents. Every read and write names its tenant: a document id from another
tenant is simply not found.

Titles, texts, chunks and their embeddings are sealed with the tenant's data key
(`app.crypto`); the index is built from the opened rows, in memory only.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.crypto.envelope import DecryptionFailed, TenantCipher
from app.crypto.keyring import Keyring
from app.store.coalesced_runs import CoalescedRuns
from app.store.database import document_chunks, documents, finishes_once_started, knowledge_revisions
from chains.ports import Found, Passage
from chains.retrieval import IndexedChunk, RetrievalIndex, embedded_chunks

log = logging.getLogger(__name__)

TITLE, TEXT = "kb_documents.title", "kb_documents.text"
CHUNK_TEXT, CHUNK_EMBEDDING = "kb_chunks.text", "kb_chunks.embedding"

class DocumentNotFound(LookupError):
    """No document with this id in the caller's tenant (whether it exists elsewhere is
    not the caller's business)."""


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


def _chunk_rows(cipher: TenantCipher, document_id: str, customer_id: str | None, title: str,
                text: str) -> list[dict[str, Any]]:
    """Chunked, embedded and sealed: run off the event loop (`_rows_off_the_loop`)."""
    chunks, vectors = embedded_chunks(title, text)
    return [
        {
            "tenant_id": cipher.tenant_id,
            "document_id": document_id,
            "chunk_index": index,
            "customer_id": customer_id,
            "text": cipher.seal_text(CHUNK_TEXT, chunk),
            "embedding": cipher.seal(CHUNK_EMBEDDING, vector.astype(np.float32).tobytes()),
        }
        for index, (chunk, vector) in enumerate(zip(chunks, vectors, strict=True))
    ]


async def _rows_off_the_loop(cipher: TenantCipher, document_id: str, customer_id: str | None, title: str,
                             text: str) -> list[dict[str, Any]]:
    """A document of 100,000 characters is about 150 chunks to split, embed and seal,
    27-38 ms of CPU here: on the loop, every stream of the process waited that long per
    upload, and a burst of uploads held them for as many times that."""
    return await asyncio.to_thread(_chunk_rows, cipher, document_id, customer_id, title, text)


def _this_document(table: Any, tenant_id: str, document_id: str) -> Any:
    return (table.c.tenant_id == tenant_id) & (table.c.document_id == document_id)


async def bump_revision(connection: AsyncConnection, tenant_id: str) -> None:
    """+1 on the tenant's revision, created at 1: an upsert, so two first writes of a
    tenant on two replicas cannot both insert."""
    dialect_insert = postgresql_insert if connection.dialect.name == "postgresql" else sqlite_insert
    statement = dialect_insert(knowledge_revisions).values(tenant_id=tenant_id, revision=1)
    await connection.execute(statement.on_conflict_do_update(
        index_elements=[knowledge_revisions.c.tenant_id],
        set_={"revision": knowledge_revisions.c.revision + 1},
    ))


class KnowledgeBase:
    def __init__(self, engine: AsyncEngine, keys: Keyring, *, cached_tenants: int = 64) -> None:
        self.engine = engine
        self.keys = keys
        # tenant → (revision, index), least recently searched first.
        self._indexes: OrderedDict[str, tuple[int, RetrievalIndex]] = OrderedDict()
        self._cached_tenants = cached_tenants
        self._builds: dict[tuple[str, int], asyncio.Future[RetrievalIndex]] = {}
        # After a write here, the tenant's cached index is rebuilt in the background, so
        # the next question does not wait for it; a burst of writes costs one rebuild at a time.
        self._refreshes = CoalescedRuns(self.index, name="knowledge index rebuild")
        # Every analysis asks whether its tenant's knowledge changed: a burst shares reads.
        self._revisions: CoalescedRuns[str, int] = CoalescedRuns(self._read_revision, name="knowledge revision read")

    def _refresh_soon(self, tenant_id: str) -> None:
        if tenant_id in self._indexes:
            self._refreshes.request(tenant_id)

    @finishes_once_started
    async def add_document(
        self, *, tenant_id: str, user_id: str, customer_id: str | None, title: str, text: str
    ) -> StoredDocument:
        document_id = uuid.uuid4().hex
        cipher = await self.keys.cipher(tenant_id)
        rows = await _rows_off_the_loop(cipher, document_id, customer_id, title, text)
        async with self.engine.begin() as connection:
            await connection.execute(
                insert(documents).values(
                    tenant_id=tenant_id, document_id=document_id, customer_id=customer_id,
                    title=cipher.seal_text(TITLE, title), text=cipher.seal_text(TEXT, text), created_by=user_id,
                    created_at=datetime.now(UTC),  # microseconds: "newest first" holds within a second
                )
            )
            await connection.execute(insert(document_chunks), rows)
            await bump_revision(connection, tenant_id)
        self._refresh_soon(tenant_id)
        return StoredDocument(document_id, customer_id, title, len(rows))

    @finishes_once_started
    async def replace_document(
        self, *, tenant_id: str, document_id: str, customer_id: str | None, title: str, text: str
    ) -> StoredDocument:
        """New title, text or customer; its chunks and vectors are rebuilt in the same
        transaction, so a search sees the old document or the new one, never a mix."""
        cipher = await self.keys.cipher(tenant_id)
        rows = await _rows_off_the_loop(cipher, document_id, customer_id, title, text)
        async with self.engine.begin() as connection:
            changed = await connection.execute(
                update(documents).where(_this_document(documents, tenant_id, document_id))
                .values(customer_id=customer_id, title=cipher.seal_text(TITLE, title), text=cipher.seal_text(TEXT, text))
            )
            if changed.rowcount == 0:
                raise DocumentNotFound(document_id)
            await connection.execute(delete(document_chunks).where(_this_document(document_chunks, tenant_id, document_id)))
            await connection.execute(insert(document_chunks), rows)
            await bump_revision(connection, tenant_id)
        self._refresh_soon(tenant_id)
        return StoredDocument(document_id, customer_id, title, len(rows))

    @finishes_once_started
    async def delete_document(self, *, tenant_id: str, document_id: str) -> StoredDocument:
        async with self.engine.begin() as connection:
            found = await self._read(connection, tenant_id, document_id)
            await connection.execute(delete(document_chunks).where(_this_document(document_chunks, tenant_id, document_id)))
            await connection.execute(delete(documents).where(_this_document(documents, tenant_id, document_id)))
            await bump_revision(connection, tenant_id)
        self._refresh_soon(tenant_id)
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
        cipher = await self.keys.cipher(tenant_id)
        return [DocumentSummary(**{**row, "title": cipher.open_text(TITLE, row["title"])}) for row in rows]

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
        cipher = await self.keys.cipher(tenant_id)
        return Document(**{**row, "title": cipher.open_text(TITLE, row["title"]), "text": cipher.open_text(TEXT, row["text"])})

    async def search(
        self, *, tenant_id: str, customer_id: str | None, query: str, k: int = 4, earlier: str | None = None
    ) -> list[Passage]:
        """The `k` best chunks for `query`; `earlier` (the question a follow-up follows)
        helps too, so "and when?" still finds what the last answer was about. Both are
        searched without the words that name the customer (`chains.retrieval.focused`):
        a chat question, and the message an interaction analysis looks up."""
        return (await self.find(tenant_id=tenant_id, customer_id=customer_id, query=query, k=k,
                                earlier=earlier)).passages

    async def find(
        self, *, tenant_id: str, customer_id: str | None, query: str, k: int = 4, earlier: str | None = None
    ) -> Found:
        """As `search`, and the words that name the customer, which the answer leaves out too."""
        index = await self.index(tenant_id)
        return index.find(query, customer_id=customer_id, k=k, earlier=earlier)

    def forget(self, tenant_id: str) -> None:
        """Drops the tenant's index from memory (its erasure)."""
        self._indexes.pop(tenant_id, None)

    async def index(self, tenant_id: str) -> RetrievalIndex:
        """The tenant's current index: one indexed read when nothing changed (shared by
        the tenant's concurrent searches, `CoalescedRuns`), a rebuild (off the event loop,
        one per tenant and revision however many ask) when it did."""
        revision = await self._revisions.get(tenant_id)
        cached = self._indexes.get(tenant_id)
        if cached is not None and cached[0] == revision:
            self._indexes.move_to_end(tenant_id)
            return cached[1]
        key = (tenant_id, revision)
        build = self._builds.get(key)
        if build is None:
            build = asyncio.ensure_future(self._build(tenant_id))
            self._builds[key] = build
            build.add_done_callback(lambda _: self._builds.pop(key, None))
        index = await asyncio.shield(build)
        self._indexes[tenant_id] = (revision, index)
        self._indexes.move_to_end(tenant_id)
        while len(self._indexes) > self._cached_tenants:
            self._indexes.popitem(last=False)
        return index

    async def _read_revision(self, tenant_id: str) -> int:
        async with self.engine.connect() as connection:
            return (await connection.execute(
                select(knowledge_revisions.c.revision).where(knowledge_revisions.c.tenant_id == tenant_id)
            )).scalar_one_or_none() or 0

    async def _build(self, tenant_id: str) -> RetrievalIndex:
        statement = (
            select(
                document_chunks.c.document_id, document_chunks.c.customer_id, document_chunks.c.text,
                document_chunks.c.embedding, documents.c.title,
            )
            .join(
                documents,
                (documents.c.tenant_id == document_chunks.c.tenant_id)
                & (documents.c.document_id == document_chunks.c.document_id),
            )
            .where(document_chunks.c.tenant_id == tenant_id)
            # Oldest document first, not by its random id: where scores tie exactly, the
            # index's order decides, and the same documents stored twice (a restore, an
            # evaluation run) must rank alike.
            .order_by(documents.c.created_at, document_chunks.c.document_id, document_chunks.c.chunk_index)
        )
        async with self.engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
        cipher = await self.keys.cipher(tenant_id)
        cached = self._indexes.get(tenant_id)
        return await asyncio.to_thread(
            functools.partial(_open_index, cipher, rows, previous=cached[1] if cached else None))


def _open_index(cipher: TenantCipher, rows: list[Any], *, previous: RetrievalIndex | None) -> RetrievalIndex:
    """Opens the sealed rows and indexes them: off the event loop, like the indexing.

    A chunk that does not open (sealed by a replica that still held a key its tenant's
    erasure destroyed) is left out and logged: one such row must not stop the tenant's chat."""
    chunks, vectors = [], []
    titles: dict[str, str] = {}  # a document's title is joined onto each of its chunks: open it once
    for row in rows:
        try:
            if row.document_id not in titles:
                titles[row.document_id] = cipher.open_text(TITLE, row.title)
            chunk = IndexedChunk(row.document_id, row.customer_id, titles[row.document_id],
                                 cipher.open_text(CHUNK_TEXT, row.text))
            vectors.append(cipher.open(CHUNK_EMBEDDING, row.embedding))
        except DecryptionFailed as error:
            log.warning("a knowledge chunk does not open, left out of the index: %r", error)
            continue
        chunks.append(chunk)
    return RetrievalIndex(chunks, np.frombuffer(b"".join(vectors), dtype=np.float32), previous=previous)
