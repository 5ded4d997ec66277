"""Quality of the embedded models on the labelled data the project ships.

    .venv/bin/python -m eval.run

Reports sentiment accuracy and macro-F1, intent and urgency accuracy, lead-scoring ROC
AUC on held-out synthetic leads, and retrieval recall@1/@3 through the real knowledge
store (SQLite in a temporary directory). See eval/data/README.md for the data.
"""

from __future__ import annotations

import asyncio
import csv
import json
import tempfile
from pathlib import Path

from sklearn.metrics import accuracy_score, f1_score

from app.store.database import create_engine, migrate, database_url
from app.store.knowledge import KnowledgeBase
from chains.local.intent import assess_urgency, classify_intent
from chains.local.sentiment import analyze_sentiment
from chains.scoring.model import train_models

DATA = Path(__file__).parent / "data"


def interaction_metrics() -> list[tuple[str, float, str]]:
    rows = list(csv.DictReader((DATA / "interactions.csv").open()))
    sentiments, intents, urgencies = [], [], []
    for row in rows:
        sentiment = analyze_sentiment(row["text"])
        intent = classify_intent(row["text"])
        sentiments.append(sentiment.label)
        intents.append(intent.intent)
        urgencies.append(assess_urgency(row["text"], sentiment=sentiment, intent=intent.intent,
                                        channel=row["channel"], time_sensitive=False, high_value=False))
    n = f"{len(rows)} labelled messages"
    return [
        ("sentiment accuracy", accuracy_score([r["sentiment"] for r in rows], sentiments), n),
        ("sentiment macro-F1", f1_score([r["sentiment"] for r in rows], sentiments, average="macro"), n),
        ("intent accuracy", accuracy_score([r["intent"] for r in rows], intents), n),
        ("intent macro-F1", f1_score([r["intent"] for r in rows], intents, average="macro"), n),
        ("urgency accuracy", accuracy_score([r["urgency"] for r in rows], urgencies), n),
    ]


def scoring_metrics() -> list[tuple[str, float, str]]:
    return [
        (f"lead scoring ROC AUC ({version})", float(model.holdout_auc or 0.0), "2,000 held-out synthetic leads")
        for version, model in train_models().items()
    ]


async def retrieval_metrics() -> list[tuple[str, float, str]]:
    data = json.loads((DATA / "knowledge.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(database_url(None, Path(tmp) / "eval.sqlite3"))
        await migrate(engine)
        knowledge = KnowledgeBase(engine)
        ids: dict[str, str] = {}
        for document in data["documents"]:
            stored = await knowledge.add_document(tenant_id="eval", user_id="eval", customer_id="c1",
                                                  title=document["title"], text=document["text"])
            ids[stored.document_id] = document["id"]
        hits_at_1 = hits_at_3 = 0
        for query in data["queries"]:
            found = await knowledge.search(tenant_id="eval", customer_id="c1", query=query["question"], k=3)
            ranked = [ids[p.document_id] for p in found]
            hits_at_1 += ranked[:1] == [query["relevant"]]
            hits_at_3 += query["relevant"] in ranked
        await engine.dispose()
    n = len(data["queries"])
    where = f"{n} questions, {len(data['documents'])} notes"
    return [("retrieval recall@1", hits_at_1 / n, where), ("retrieval recall@3", hits_at_3 / n, where)]


def main() -> None:
    results = interaction_metrics() + scoring_metrics() + asyncio.run(retrieval_metrics())
    width = max(len(name) for name, _, _ in results)
    print(f"{'metric':<{width}}  value  data")
    print(f"{'-' * width}  -----  ----")
    for name, value, where in results:
        print(f"{name:<{width}}  {value:.3f}  {where}")


if __name__ == "__main__":
    main()
