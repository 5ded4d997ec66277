"""Which retrieved sentences answer a question: features and a learned model over them.

A rep's question names few words, and the sentence that answers it often shares only
one ("when's the renewal" → "Term: 12 months from Mar. 1, 2024, auto-renews"). So a
sentence is judged on several signals at once: how much of the question's weight it
covers (rare words count more), its embedding similarity, whether it holds the kind
of thing asked for (a date for "when", an amount for "how much", a name for "who"),
how highly its passage was retrieved, whether it is the customer's own document, and
how much of the question the retrieved passages do not mention at all (the strongest
sign that the documents cannot answer it). Paraphrase ("bail early" for "terminate")
counts through word embeddings; each signal also counts against the best candidate's,
since "covers the question" means little when another sentence covers it better; and
a sentence is read with its neighbours, its passage's title and its own label ("Term:
12 months"), because notes put the subject in one place and the fact in the next. A
logistic regression trained on labelled
questions (`chains/local/corpus/chat_train*.json`, by `python -m chains.local.answer_training`)
weighs them; its coefficients ship in `answer_model.json`.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from chains.embeddings import EMBEDDING_DIM, embed, embed_one
from chains.retrieval import focused, tokenize
from chains.text import split_sentences

MODEL_PATH = Path(__file__).with_name("answer_model.json")

_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_WEEKDAY = r"(?:mon|tue|tues|wed|thu|thur|thurs|fri|sat|sun)(?:day)?s?\b"
_NUMBER_WORD = r"(?:one|two|three|four|five|six|seven|eight|nine|ten|twelve|fifteen|twenty|thirty|forty|forty-five|sixty|ninety)"
_UNIT = r"(?:business\s+|calendar\s+|working\s+)?(?:days?|hours?|hrs?|weeks?|months?|mos?|years?|yrs?|minutes?|mins?)\b"
# Kinds of answer a question asks for, and how a sentence shows it has one.
ANSWER_KINDS: dict[str, tuple[re.Pattern[str], re.Pattern[str]]] = {
    "date": (
        re.compile(r"\b(when|what date|which date|deadline|cutoff|cut-off|kick ?off|start|expire|renew|due)\b", re.I),
        re.compile(rf"\b{_MONTH}\s*\d|\b\d{{1,2}}/\d{{1,2}}\b|(?<![#\w])(?<!(?-i:[A-Z]{{2}})-)20\d\d\b|\b{_WEEKDAY}|\b(q[1-4]|today|tomorrow|yesterday)\b", re.I),
    ),
    "money": (
        re.compile(r"\b(how much|cost|price|pricing|fee|fees|pay|paying|paid|charge|credit|rate|budget|spend|discount|owe|cut)\b", re.I),
        re.compile(r"[$€£]\s?\d|\b\d+(?:\.\d+)?\s?%|\bpercent\b|\b\d+(?:,\d{3})+\b", re.I),
    ),
    "count": (
        re.compile(r"\b(how many|number of|how big|size|limit|seats)\b", re.I),
        re.compile(rf"\b\d|\b{_NUMBER_WORD}\b", re.I),
    ),
    "duration": (
        re.compile(r"\b(how long|notice|window|within|how soon|how fast|response time|turnaround|period|term)\b", re.I),
        re.compile(rf"\b(?:\d+|{_NUMBER_WORD})\s*(?:\(\d+\)\s*)?-?{_UNIT}", re.I),
    ),
    "person": (
        re.compile(r"\b(who|whom|whose|contact|decision maker|decides|owner|champion|runs)\b", re.I),
        # Case matters here: a capitalised name, a title before one or a role after it, or
        # a first name doing what people do in notes ("Dana is the buyer", "Marcus decides").
        re.compile(r"\b(?:Dr|Mr|Mrs|Ms)\.\s+[A-Z]|\b[A-Z][a-z]+\s+[A-Z][a-z]+\b|\b[A-Z][a-z]+\s+\((?:owner|CEO|CFO|founder|manager)"
                   r"|\b(?:CEO|CFO|COO|CTO|owner|founder|manager|director|buyer)\s+[A-Z][a-z]+\b"
                   r"|\b[A-Z][a-z]+\s+(?:signs|signed|approves|approved|decides|owns|runs|handles|leads|manages)\b"
                   r"|\b[A-Z][a-z]+\s+(?:is|was)\s+(?:the|our|their)\s+(?:buyer|owner|contact|decision|champion|"
                   r"manager|director|lead|founder|CEO|CFO|signatory)"),
    ),
    "email": (
        re.compile(r"\b(e-?mail address|where do .* go|send .* to|which address|inbox)\b", re.I),
        re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.]+\b"),
    ),
}
FEATURES = (
    "coverage", "coverage_with_earlier", "similarity", "similarity_to_earlier", "passage_reciprocal_rank",
    "own_document", "kind_present", "kind_missing", "question_unmatched", "log_length",
    "soft_coverage", "coverage_below_best", "similarity_below_best", "soft_coverage_below_best",
    "previous_coverage", "next_coverage", "title_coverage", "label_coverage", "has_number",
)
# "Term: 12 months", "Contact for invoices: Gail": the label says what the value is.
_LABEL = re.compile(r"^\W*([A-Za-z][\w /&#().-]{0,40}?):\s")


@dataclass(frozen=True, slots=True)
class Candidate:
    """One sentence of a retrieved passage; `passage` is its 1-based citation number."""

    text: str
    passage: int
    position: int
    own_document: bool
    title: str = ""


def candidates(passages: Sequence[tuple[str, str, bool]]) -> list[Candidate]:
    """Sentences of `(title, text, is the customer's own)` passages, in source order."""
    found: list[Candidate] = []
    for number, (title, text, own) in enumerate(passages, start=1):
        for sentence in split_sentences(text):
            found.append(Candidate(sentence, number, len(found), own, title))
    return found


def asked_kinds(question: str) -> list[str]:
    return [kind for kind, (asks, _) in ANSWER_KINDS.items() if asks.search(question)]


def features(
    question: str, found: Sequence[Candidate], earlier: str | None = None, subject: frozenset[str] = frozenset()
) -> np.ndarray:
    """One row of `FEATURES` per candidate sentence, judged without the words of the
    question that name the customer (`subject`, `chains.retrieval.focused`): every
    candidate is about the customer, its own documents and the tenant's policies alike."""
    question = focused(question, subject)
    earlier = focused(earlier, subject) if earlier else earlier
    count = len(found)
    titles = list(dict.fromkeys(c.title for c in found))
    labels = [label.group(1) if (label := _LABEL.match(c.text)) else "" for c in found]
    words = tokenize([*(c.text for c in found), question, earlier or "", *titles, *labels])
    sentence_words = [set(w) for w in words[:count]]
    asked, before = set(words[count]), set(words[count + 1]) - set(words[count])
    title_words = dict(zip(titles, (set(w) for w in words[count + 2:count + 2 + len(titles)]), strict=True))
    label_words = [set(w) for w in words[count + 2 + len(titles):]]
    frequency = Counter(word for ws in sentence_words for word in ws)

    def idf(word: str) -> float:
        return math.log(1 + (count + 1) / (frequency.get(word, 0) + 0.5))

    weights = {word: idf(word) for word in sorted(asked)}
    total = sum(weights.values()) or 1.0
    earlier_weights = {word: 0.5 * idf(word) for word in before}
    total_with_earlier = total + sum(earlier_weights.values())

    def covered(ws: set[str]) -> float:
        return sum(weight for word, weight in weights.items() if word in ws) / total

    # Question words no retrieved sentence contains: weight share of the unanswerable.
    unmatched = sum(weight for word, weight in weights.items() if frequency.get(word, 0) == 0) / total
    vectors = embed([c.text for c in found])
    similarity = vectors @ embed_one(question)
    similarity_earlier = vectors @ embed_one(earlier) if earlier else np.zeros(count)
    kinds = asked_kinds(question + " " + (earlier or "") if len(asked) <= 2 else question)
    coverage = np.array([covered(ws) for ws in sentence_words])
    # Soft coverage: each question word counts by its nearest word in the sentence. The
    # words are embedded afresh for each question (a few ms): a cache would keep every
    # tenant's vocabulary in the workers past its erasure.
    vocabulary = sorted(set(weights).union(*sentence_words))
    word_vectors = dict(zip(vocabulary, embed(vocabulary), strict=True))
    asked_vectors = np.asarray([word_vectors[word] for word in weights]).reshape(len(weights), EMBEDDING_DIM)
    soft = np.zeros(count)
    for index, ws in enumerate(sentence_words):
        if weights and ws:
            nearest = (asked_vectors @ np.asarray([word_vectors[word] for word in ws]).T).max(axis=1)
            soft[index] = float(np.dot(list(weights.values()), np.clip(nearest, 0.0, 1.0))) / total
    rows = []
    for index, candidate in enumerate(found):
        ws = sentence_words[index]
        covered_earlier = sum(weight for word, weight in earlier_weights.items() if word in ws)
        present = [ANSWER_KINDS[kind][1].search(candidate.text) is not None for kind in kinds]
        same_passage = [neighbour for neighbour in (index - 1, index + 1)
                        if 0 <= neighbour < count and found[neighbour].passage == candidate.passage]
        rows.append([
            coverage[index],
            (coverage[index] * total + covered_earlier) / total_with_earlier,
            float(similarity[index]),
            float(similarity_earlier[index]),
            1.0 / candidate.passage,
            1.0 if candidate.own_document else 0.0,
            1.0 if any(present) else 0.0,
            1.0 if kinds and not any(present) else 0.0,
            unmatched,
            math.log(1 + len(candidate.text)),
            soft[index],
            coverage[index] - coverage.max(),
            float(similarity[index] - similarity.max()),
            soft[index] - soft.max(),
            coverage[index - 1] if index - 1 in same_passage else 0.0,
            coverage[index + 1] if index + 1 in same_passage else 0.0,
            covered(title_words[candidate.title]),
            covered(label_words[index]),
            1.0 if any(ch.isdigit() for ch in candidate.text) else 0.0,
        ])
    return np.asarray(rows, dtype=float).reshape(count, len(FEATURES))


@dataclass(frozen=True, slots=True)
class AnswerModel:
    """Logistic regression over standardised features, plus the decision thresholds
    chosen on leave-one-writer-out predictions (`answer_training`)."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    intercept: float
    answer_threshold: float
    keep_ratio: float

    def probabilities(self, rows: np.ndarray) -> np.ndarray:
        logits = ((rows - self.mean) / self.scale) @ self.weights + self.intercept
        return 1.0 / (1.0 + np.exp(-logits))

    def to_json(self) -> dict[str, object]:
        return {"features": list(FEATURES), "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "weights": self.weights.tolist(), "intercept": self.intercept,
                "answer_threshold": self.answer_threshold, "keep_ratio": self.keep_ratio}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> AnswerModel:
        if data["features"] != list(FEATURES):
            raise ValueError("answer_model.json was trained on other features: retrain it")
        return cls(np.asarray(data["mean"]), np.asarray(data["scale"]), np.asarray(data["weights"]),
                   float(data["intercept"]), float(data["answer_threshold"]), float(data["keep_ratio"]))  # type: ignore[arg-type]


@lru_cache(maxsize=1)
def answer_model() -> AnswerModel:
    return AnswerModel.from_json(json.loads(MODEL_PATH.read_text()))
