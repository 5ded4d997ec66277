"""The local answer of the insights chat: the source sentences closest to the question
by embedding similarity, each with its citation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from chains.embeddings import embed, embed_one
from chains.text import clip, split_sentences

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
