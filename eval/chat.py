"""Insights chat quality: retrieval, answers, citations and refusals, through the real chain.

    .venv/bin/python -m eval.chat [--split dev|test] [--show-misses]

Each question set (`eval/data/chat_{dev,test}.json`) holds customers, their documents
and tenant-wide ones, and questions a rep would type: follow-ups in a session,
conflicts where the customer's own document overrides a tenant policy, and questions
no document answers. The documents go into a fresh SQLite knowledge base through
`KnowledgeBase.add_document`; every question runs through `build_insights_chain`
with the embedded `local` model, the CPU pool and conversation memory the service
uses, in file order (a follow-up comes after the question it follows).

Scores:
- recall@3: answerable questions whose gold document is among the first 3 retrieved
  chunks' documents (the same `KnowledgeBase.search` call the chain makes);
- containment: answerable questions whose answer contains every gold fact (each fact
  has accepted spellings, case-insensitive);
- citation precision: of the documents the final `sources` cite on answerable
  questions, the share that are gold documents;
- refusal accuracy: unanswerable questions answered "nothing found" citing nothing;
  `false refusals` is the share of answerable questions refused;
- for sets whose questions name their `kind` (`chat_conflicts_{dev,test}.json`):
  containment per kind. `conflict`: the customer's own document overrides a tenant
  policy on what is asked, and the answer must hold the customer's value (the contract:
  the customer's own wins); `policy_only`: the customer's documents are silent and the
  policy answers; `own_only`, `agree`: the customer's documents alone, or both alike.
The dev splits are for tuning; the test splits (written separately, never tuned on) are
what the README reports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core.config import Settings
from app.core.cpu_pool import FairCpuPool
from app.core.encryption_keys import keyring
from app.store.database import create_engine, database_url, migrate
from app.store.knowledge import KnowledgeBase
from app.store.memory import ConversationMemory
from chains.context import run_config
from chains.insights import build_insights_chain
from chains.local.answer_training import TARGETS as ANSWER_TARGETS
from chains.local.answer_training import holds
from chains.local.composer import NOT_FOUND
from chains.providers.router import ProviderRouter

DATA = Path(__file__).parent / "data"
# The answer targets are the ones the answer model's thresholds are chosen against.
TARGETS = {"recall@3": 0.9, **ANSWER_TARGETS}
TENANT = "eval-chat"
SPLITS = ("dev", "test", "conflicts_dev", "conflicts_test")


@dataclass
class ChatReport:
    split: str
    documents: int
    questions: int
    metrics: dict[str, float]
    misses: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.split}: {self.questions} questions, {self.documents} documents"


async def evaluate_chat(split: str) -> ChatReport:
    data = json.loads((DATA / f"chat_{split}.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(database_url(None, Path(tmp) / "chat.sqlite3"))
        await migrate(engine)
        settings = Settings(data_dir=Path(tmp))
        keys = keyring(settings, engine)
        knowledge, memory = KnowledgeBase(engine, keys), ConversationMemory(engine, keys)
        cpu = FairCpuPool.configured(settings, workers=1)
        try:
            chain = build_insights_chain(ProviderRouter.local_only(settings), knowledge, memory, cpu)
            ids: dict[str, str] = {}
            for document in data["documents"]:
                stored = await knowledge.add_document(
                    tenant_id=TENANT, user_id="eval", customer_id=document["customer_id"],
                    title=document["title"], text=document["text"])
                ids[stored.document_id] = document["id"]
            return await _score(split, data, chain, knowledge, ids)
        finally:
            cpu.close()
            await engine.dispose()


async def _score(split: str, data: dict[str, Any], chain: Any, knowledge: KnowledgeBase,
                 ids: dict[str, str]) -> ChatReport:
    config = run_config(TENANT, "eval-rep")
    sessions: dict[str, str] = {}
    previous: dict[str, str] = {}
    recalled = contained = refused_right = false_refusals = 0
    by_kind: dict[str, list[int]] = {}  # kind: [contained, asked]
    cited_total = cited_gold = 0
    answerable = [q for q in data["questions"] if q["answerable"]]
    misses: list[str] = []
    for q in data["questions"]:
        session = sessions.setdefault(q["session"], uuid.uuid4().hex) if q["session"] else uuid.uuid4().hex
        found = await knowledge.search(tenant_id=TENANT, customer_id=q["customer_id"], query=q["question"],
                                       k=3, earlier=previous.get(session))
        output = await chain.ainvoke(
            {"customer_id": q["customer_id"], "question": q["question"], "session_id": session}, config)
        previous[session] = q["question"]
        answer, cited = output["answer"], [ids[s["document_id"]] for s in output["sources"]]
        refused = answer.strip() == NOT_FOUND and not cited
        if q["answerable"]:
            hit = any(ids[p.document_id] in q["gold_documents"] for p in found)
            recalled += hit
            has_facts = all(holds(answer, fact) for fact in q["gold_facts"])
            contained += has_facts
            if kind := q.get("kind"):
                counts = by_kind.setdefault(kind, [0, 0])
                counts[0] += has_facts
                counts[1] += 1
            false_refusals += refused
            cited_total += len(set(cited))
            cited_gold += sum(d in q["gold_documents"] for d in set(cited))
            if not (hit and has_facts) or any(d not in q["gold_documents"] for d in cited):
                misses.append(f"{q['id']} {q['question']!r} gold {q['gold_documents']} {q['gold_facts']} "
                              f"retrieved {[ids[p.document_id] for p in found]} cited {cited}\n    → {answer}")
        else:
            refused_right += refused
            if not refused:
                misses.append(f"{q['id']} (unanswerable) {q['question']!r} cited {cited}\n    → {answer}")
    unanswerable = len(data["questions"]) - len(answerable)
    metrics = {
        "recall@3": recalled / len(answerable),
        "containment": contained / len(answerable),
        "citation precision": cited_gold / cited_total if cited_total else 1.0,
        **({"refusal accuracy": refused_right / unanswerable} if unanswerable else {}),
        "false refusals": false_refusals / len(answerable),
        **{f"containment, {kind}": held / asked for kind, (held, asked) in sorted(by_kind.items())},
    }
    return ChatReport(split, len(data["documents"]), len(data["questions"]), metrics, misses)


def print_chat_report(report: ChatReport, *, show_misses: bool = False) -> None:
    print(f"\ninsights chat — {report.where}")
    for name, value in report.metrics.items():
        target = TARGETS.get(name)
        mark = "" if target is None else f"  (target ≥ {target}{'' if value >= target else ', MISSED'})"
        print(f"  {name:<20} {value:.3f}{mark}")
    if show_misses:
        for miss in report.misses:
            print("  -", miss)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m eval.chat")
    parser.add_argument("--split", choices=SPLITS, default="dev")
    parser.add_argument("--show-misses", action="store_true")
    args = parser.parse_args()
    print_chat_report(asyncio.run(evaluate_chat(args.split)), show_misses=args.show_misses)


if __name__ == "__main__":
    main()
