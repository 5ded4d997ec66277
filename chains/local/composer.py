"""Readable text composed from analysis results: the `local` model's writing.

Nothing here is canned: a summary quotes the sentence of the customer's message that
carries the most sentiment or intent signal; an answer quotes the source sentences
closest to the question by embedding similarity, each with its citation.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from chains.local.embeddings import embed, embed_one
from chains.local.sentiment import analyze_sentiment

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_INTENT_WORDS = {
    "purchase_interest": "is interested in buying",
    "pricing_inquiry": "is asking about pricing",
    "support_request": "needs help with a problem",
    "complaint": "is complaining",
    "cancellation_risk": "may cancel",
    "meeting_request": "wants to meet",
    "feedback": "is sharing feedback",
    "general_inquiry": "has a question",
}


def split_sentences(text: str) -> list[str]:
    return [part.strip() for part in _SENTENCE_END.split(text) if len(part.strip()) > 2]


def _clip(sentence: str, limit: int = 220) -> str:
    return sentence if len(sentence) <= limit else sentence[: limit - 1].rstrip() + "…"


def compose_summary(facts: dict[str, Any]) -> str:
    text = str(facts.get("text", ""))
    sentences = split_sentences(text) or [text]
    cues = [str(cue).lower() for cue in facts.get("cues", [])]

    def salience(sentence: str) -> float:
        lowered = sentence.lower()
        cue_hits = sum(1 for cue in cues if cue and cue in lowered)
        return abs(analyze_sentiment(sentence).score) + cue_hits

    key_sentence = max(sentences, key=salience)
    sentiment = facts.get("sentiment", {}).get("label", "neutral")
    intent = str(facts.get("intent", "general_inquiry"))
    channel = facts.get("channel", "message")
    urgency = facts.get("urgency", "low")
    who = "A high-value customer" if facts.get("customer_tier") == "high_value" else "The customer"
    opening = (
        f"{who} {_INTENT_WORDS.get(intent, 'has a question')} "
        f"({sentiment} {channel}, {urgency} urgency)."
    )
    return f'{opening} Key point: "{_clip(key_sentence)}"'


def compose_answer(facts: dict[str, Any], *, max_sentences: int = 3) -> str:
    question = str(facts.get("question", ""))
    passages: list[dict[str, Any]] = list(facts.get("passages", []))
    if not passages:
        return (
            "I found nothing in this customer's knowledge base that answers that. "
            "Add notes or documents for them and ask again."
        )
    candidates: list[tuple[str, int]] = []
    for index, passage in enumerate(passages, start=1):
        for sentence in split_sentences(str(passage.get("text", ""))):
            candidates.append((sentence, index))
    if not candidates:
        return "The matching documents are empty."
    vectors = embed([sentence for sentence, _ in candidates])
    similarity = vectors @ embed_one(question)
    best = np.argsort(-similarity)[:max_sentences]
    # Keep the chosen sentences in source order so the answer reads naturally.
    chosen = sorted(best.tolist(), key=lambda i: (candidates[i][1], i))
    cited = " ".join(f"{_clip(candidates[i][0])} [{candidates[i][1]}]" for i in chosen)
    titles = ", ".join(
        f"[{index}] {passage.get('title', 'untitled')}"
        for index, passage in enumerate(passages, start=1)
        if any(candidates[i][1] == index for i in chosen)
    )
    return f"From this customer's records: {cited}\nSources: {titles}"
