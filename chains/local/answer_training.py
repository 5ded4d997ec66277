"""Trains the local answer model and chooses its thresholds; writes `answer_model.json`.

    .venv/bin/python -m chains.local.answer_training [--train F] [--dev F]

The model learns from the labelled questions in `corpus/chat_train.json` (a sentence is
a positive when it holds a gold fact of the question and comes from a gold document);
the refusal threshold and how close to the best a second sentence must be are then
chosen on the dev split (`eval/data/chat_dev.json`) by the harmonic mean of answer
containment and refusal accuracy (citation precision breaks ties): a mean that
answering everything or refusing everything cannot win. The test split is never read
here. Retrieval, sentence splitting and features are the service's own functions, so
the model sees exactly what it will see when serving.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from chains.insights import MIN_RELEVANCE, PASSAGES
from chains.local.answering import MODEL_PATH, AnswerModel, Candidate, candidates, features
from chains.local.composer import select_sentences
from chains.retrieval import IndexedChunk, RetrievalIndex, embedded_chunks

TRAIN = Path(__file__).parent / "corpus" / "chat_train.json"
DEV = Path(__file__).resolve().parents[2] / "eval" / "data" / "chat_dev.json"


@dataclass(frozen=True, slots=True)
class Example:
    question: dict[str, Any]
    found: list[Candidate]
    documents: list[str]  # the document id of each passage, by citation number − 1
    rows: np.ndarray
    labels: np.ndarray


def holds(text: str, fact: Sequence[str]) -> bool:
    """Whether `text` states a gold fact, in one of its accepted spellings (any case)."""
    lowered = text.lower()
    return any(spelling.lower() in lowered for spelling in fact)


def examples(data: dict[str, Any]) -> list[Example]:
    chunks: list[IndexedChunk] = []
    vectors = []
    for document in data["documents"]:
        texts, embedded = embedded_chunks(document["title"], document["text"])
        chunks += [IndexedChunk(document["id"], document["customer_id"], document["title"], t) for t in texts]
        vectors.append(embedded)
    index = RetrievalIndex(chunks, np.concatenate(vectors))
    previous: dict[str, str] = {}
    found_examples = []
    for q in data["questions"]:
        earlier = previous.get(q["session"]) if q["session"] else None
        passages = [p for p in index.search(q["question"], customer_id=q["customer_id"], k=PASSAGES,
                                            earlier=earlier)
                    if p.score >= MIN_RELEVANCE]
        if q["session"]:
            previous[q["session"]] = q["question"]
        found = candidates([(p.title, p.text, p.customer_id is not None) for p in passages])
        if not found:
            continue
        documents = [p.document_id for p in passages]
        labels = np.array([
            q["answerable"] and documents[c.passage - 1] in q["gold_documents"] and any(holds(c.text, fact) for fact in q["gold_facts"])
            for c in found
        ], dtype=float)
        found_examples.append(Example(q, found, documents, features(q["question"], found, earlier), labels))
    return found_examples


def fit(train: list[Example]) -> AnswerModel:
    rows = np.concatenate([e.rows for e in train])
    labels = np.concatenate([e.labels for e in train])
    mean, scale = rows.mean(axis=0), rows.std(axis=0)
    scale[scale == 0] = 1.0
    classifier = LogisticRegression(C=1.0, max_iter=2_000).fit((rows - mean) / scale, labels)
    return AnswerModel(mean, scale, classifier.coef_[0], float(classifier.intercept_[0]),
                       answer_threshold=0.5, keep_ratio=0.8)


def outcome(model: AnswerModel, dev: list[Example]) -> dict[str, float]:
    """Containment, refusal accuracy and citation precision of the composer's choice."""
    contained = answerable = refused_right = unanswerable = cited = cited_gold = 0
    for example in dev:
        chosen = select_sentences(example.found, example.rows, model)
        q = example.question
        if q["answerable"]:
            answerable += 1
            text = " ".join(c.text for c in chosen)
            contained += all(holds(text, fact) for fact in q["gold_facts"])
            documents = {example.documents[c.passage - 1] for c in chosen}
            cited += len(documents)
            cited_gold += len(documents & set(q["gold_documents"]))
        else:
            unanswerable += 1
            refused_right += not chosen
    return {"containment": contained / max(answerable, 1), "refusal accuracy": refused_right / max(unanswerable, 1),
            "citation precision": cited_gold / cited if cited else 1.0}


def choose_thresholds(model: AnswerModel, dev: list[Example]) -> tuple[AnswerModel, dict[str, float]]:
    best: tuple[float, AnswerModel, dict[str, float]] | None = None
    for threshold, keep in itertools.product(np.arange(0.05, 0.91, 0.025), np.arange(0.3, 1.0, 0.05)):
        candidate = AnswerModel(model.mean, model.scale, model.weights, model.intercept,
                                round(float(threshold), 3), round(float(keep), 3))
        scores = outcome(candidate, dev)
        answered, refused = scores["containment"], scores["refusal accuracy"]
        # Harmonic mean: answering everything or refusing everything both score 0.
        balanced = 2 * answered * refused / (answered + refused) if answered + refused else 0.0
        balanced += 0.01 * scores["citation precision"]  # breaks ties
        if best is None or balanced > best[0] + 1e-9:
            best = (balanced, candidate, scores)
    assert best is not None
    return best[1], best[2]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m chains.local.answer_training")
    parser.add_argument("--train", type=Path, default=TRAIN)
    parser.add_argument("--dev", type=Path, default=DEV)
    args = parser.parse_args()
    train = examples(json.loads(args.train.read_text()))
    dev = examples(json.loads(args.dev.read_text()))
    model, scores = choose_thresholds(fit(train), dev)
    MODEL_PATH.write_text(json.dumps(model.to_json(), indent=2) + "\n")
    print(f"trained on {len(train)} questions; thresholds chosen on {len(dev)} dev questions: "
          + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    for name, weight in zip(model.to_json()["features"], model.weights, strict=True):  # type: ignore[call-overload]
        print(f"  {name:<24} {weight:+.3f}")


if __name__ == "__main__":
    main()
