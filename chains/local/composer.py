"""Readable text composed from analysis results: the `local` model's writing.

Nothing here is canned: a summary quotes the sentence of the customer's message that
carries the most sentiment or intent signal; an answer quotes the source sentences
closest to the question by embedding similarity, each with its citation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from chains.embeddings import embed, embed_one
from chains.local.sentiment import analyze_sentiment
from chains.text import clip, split_sentences

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


def compose_summary(
    *,
    text: str,
    sentiment: str,
    intent: str,
    urgency: str,
    channel: str,
    customer_tier: str,
    cues: Sequence[str],
) -> str:
    sentences = split_sentences(text) or [text]
    lowered_cues = [cue.lower() for cue in cues]

    def salience(sentence: str) -> float:
        lowered = sentence.lower()
        cue_hits = sum(1 for cue in lowered_cues if cue and cue in lowered)
        return abs(analyze_sentiment(sentence).score) + cue_hits

    key_sentence = max(sentences, key=salience)
    who = "A high-value customer" if customer_tier == "high_value" else "The customer"
    opening = (
        f"{who} {_INTENT_WORDS.get(intent, 'has a question')} "
        f"({sentiment} {channel}, {urgency} urgency)."
    )
    return f'{opening} Key point: "{clip(key_sentence)}"'


def compose_answer(question: str, passages: Sequence[tuple[str, str]], *, max_sentences: int = 3) -> str:
    """Answers from `(title, text)` passages with the sentences closest to the question, cited."""
    if not passages:
        return (
            "I found nothing in this customer's knowledge base that answers that. "
            "Add notes or documents for them and ask again."
        )
    candidates: list[tuple[str, int]] = []
    for index, (_, passage_text) in enumerate(passages, start=1):
        for sentence in split_sentences(passage_text):
            candidates.append((sentence, index))
    if not candidates:
        return "The matching documents are empty."
    vectors = embed([sentence for sentence, _ in candidates])
    similarity = vectors @ embed_one(question)
    best = np.argsort(-similarity)[:max_sentences]
    # Keep the chosen sentences in source order so the answer reads naturally.
    chosen = sorted(best.tolist(), key=lambda i: (candidates[i][1], i))
    cited = " ".join(f"{clip(candidates[i][0])} [{candidates[i][1]}]" for i in chosen)
    titles = ", ".join(
        f"[{index}] {title}"
        for index, (title, _) in enumerate(passages, start=1)
        if any(candidates[i][1] == index for i in chosen)
    )
    return f"From this customer's records: {cited}\nSources: {titles}"
