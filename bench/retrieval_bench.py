"""What a chat question costs to retrieve with 10,000 chunks per tenant, against the
round-one search measured in the same run.

    python -m bench.retrieval_bench [--chunks 10000] [--questions 200]

Two tenants with `--chunks` chunks each go into one SQLite database: 300 customers with
equal shares of 90% of the chunks, the rest tenant-wide (policies every customer's
question also searches). Chunk texts are sentences drawn from a CRM vocabulary with
customer names, amounts and dates, embedded with the service's own model.

Rows (p50 / p95 / max milliseconds per question, one question at a time):
- `round one: SQL scan + cosine`: the previous `KnowledgeBase.search`: select every
  chunk of the tenant in the customer's scope with its vector, one matrix product.
  SQLite has no index on a chunk's customer, so the scan reads every chunk of the tenant.
- `hybrid index, warm`: this round's `KnowledgeBase.search` (revision read, BM25 + cosine
  over the in-memory index, fusion), the steady state between document writes.
- `hybrid index, after a write`: the first question after a document changed, which
  rebuilds the tenant's index from its rows (once per write, however many ask).
The baseline does less work per question (no BM25, no fusion): its cost is the scan.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlalchemy import insert, or_, select

from app.core.config import Settings
from app.core.encryption_keys import keyring
from app.store.database import create_engine, database_url, document_chunks, documents, migrate
from app.store.knowledge import KnowledgeBase, bump_revision
from chains.embeddings import embed, embed_one

WORDS = ("renewal invoice credit refund notice contract onboarding training ticket DKIM DNS campaign "
         "newsletter budget retainer SEO PPC social audit landing page approval consent export list "
         "contacts seats discount upgrade downgrade pause cancel escalation complaint decision owner").split()
NAMES = ("Harbor Street Dental", "Ironleaf Fitness", "Blue Crumb Bakery Co.", "Olsen & Reyes", "Dr. Patel",
         "Bright Bakery Co.", "St. Louis", "Maria Lopez", "Okta", "MailCrest")


def sentence(rng: random.Random) -> str:
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14)))
    return (f"{rng.choice(NAMES)} {words} ${rng.randint(20, 5000):,}.{rng.randint(0, 99):02d} "
            f"by Jan. {rng.randint(1, 28)}, 202{rng.randint(3, 6)}.")


async def fill(engine: object, tenant: str, chunks: int, rng: random.Random) -> list[str]:
    customers = [f"{tenant}-c{i}" for i in range(300)]
    per_document = 5
    rows_documents, rows_chunks, texts = [], [], []
    for d in range(chunks // per_document):
        customer = None if d % 10 == 0 else customers[d % len(customers)]
        document_id = f"{tenant}-d{d}"
        rows_documents.append({"tenant_id": tenant, "document_id": document_id, "customer_id": customer,
                               "title": f"Note {d}", "text": "", "created_by": "bench",
                               "created_at": datetime.now(UTC)})
        for index in range(per_document):
            text = " ".join(sentence(rng) for _ in range(3))
            texts.append(text)
            rows_chunks.append({"tenant_id": tenant, "document_id": document_id, "chunk_index": index,
                                "customer_id": customer, "text": text})
    vectors = embed(texts)
    for row, vector in zip(rows_chunks, vectors, strict=True):
        row["embedding"] = vector.astype(np.float32).tobytes()
    async with engine.begin() as connection:  # type: ignore[attr-defined]
        await connection.execute(insert(documents), rows_documents)
        await connection.execute(insert(document_chunks), rows_chunks)
        await bump_revision(connection, tenant)
    return customers


async def round_one_search(engine: object, tenant: str, customer: str, query: str, k: int = 4) -> list[str]:
    """The round-one `KnowledgeBase.search`, kept here as the baseline."""
    statement = select(document_chunks.c.document_id, document_chunks.c.embedding).where(
        (document_chunks.c.tenant_id == tenant)
        & or_(document_chunks.c.customer_id == customer, document_chunks.c.customer_id.is_(None)))
    async with engine.connect() as connection:  # type: ignore[attr-defined]
        rows = (await connection.execute(statement)).all()
    matrix = np.frombuffer(b"".join(row.embedding for row in rows), dtype=np.float32).reshape(len(rows), -1)
    best = np.argsort(-(matrix @ embed_one(query)))[:k]
    return [rows[int(i)].document_id for i in best]


async def timed(call: Callable[[], Awaitable[object]], repeat: int) -> list[float]:
    found = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        found.append((time.perf_counter() - started) * 1_000)
    return found


def row(name: str, ms: list[float], reference: float | None) -> str:
    p50, p95 = statistics.median(ms), float(np.percentile(ms, 95))
    ratio = f"{p50 / reference:6.2f}x" if reference else "     -"
    return f"| {name:<34} | {p50:8.2f} | {p95:8.2f} | {max(ms):8.2f} | {ratio} |"


async def run(chunks: int, questions: int) -> None:
    rng = random.Random(13)
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(database_url(None, Path(tmp) / "bench.sqlite3"))
        await migrate(engine)
        customers = await fill(engine, "tenant-a", chunks, rng)
        await fill(engine, "tenant-b", chunks, rng)
        knowledge = KnowledgeBase(engine, keyring(Settings(data_dir=Path(tmp)), engine))
        asks = [(rng.choice(customers), " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))))
                for _ in range(questions)]
        ask = iter(asks * 3)

        async def baseline() -> object:
            customer, query = next(ask)
            return await round_one_search(engine, "tenant-a", customer, query)

        async def hybrid() -> object:
            customer, query = next(ask)
            return await knowledge.search(tenant_id="tenant-a", customer_id=customer, query=query, k=4)

        async def after_write() -> object:
            async with engine.begin() as connection:
                await bump_revision(connection, "tenant-a")
            return await hybrid()

        await hybrid()  # first build, and warm the embedding model
        old = await timed(baseline, questions)
        new = await timed(hybrid, questions)
        rebuild = await timed(after_write, 5)
        await engine.dispose()
    reference = statistics.median(old)
    print(f"\nRetrieval per question, {chunks:,} chunks per tenant (2 tenants), {questions} questions\n")
    print(f"| {'path':<34} | {'p50 ms':>8} | {'p95 ms':>8} | {'max ms':>8} | {'vs base':>7} |")
    print(f"|{'-' * 36}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 9}|")
    print(row("round one: SQL scan + cosine", old, None))
    print(row("hybrid index, warm", new, reference))
    print(row("hybrid index, after a write", rebuild, reference))
    print(f"\nwarm hybrid search is {reference / statistics.median(new):.1f}x faster than the round-one scan at p50")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.retrieval_bench")
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--questions", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(run(args.chunks, args.questions))


if __name__ == "__main__":
    main()
