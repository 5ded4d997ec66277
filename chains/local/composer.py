"""The local answer of the insights chat: the retrieved sentences the answer model
finds answer the question, each cited, or a plain "nothing found" when none does.

Only sentences nearly as likely as the best one are kept, so the answer cites what it
used and not everything that was retrieved (`chains.local.answering` says how a sentence is judged).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from chains.local.answering import FEATURES, AnswerModel, Candidate, answer_model, candidates, features
from chains.text import clip

NOT_FOUND = "I found nothing in this customer's documents or the shared knowledge base that answers that."
MAX_SENTENCES = 3
# A customer's own sentence with the kind of answer asked for replaces a tenant-wide
# one that scores up to this many times better.
OWN_OVERRIDE_RATIO = 0.5
KIND_PRESENT, KIND_MISSING = FEATURES.index("kind_present"), FEATURES.index("kind_missing")


def select_sentences(
    found: Sequence[Candidate], rows: np.ndarray, model: AnswerModel
) -> list[Candidate]:
    """The sentences that answer, best first; none when even the best falls short.

    When the best sentence lacks the kind of answer asked for ("when", "how much") and
    the sentence after it in the same passage has one, that one comes too: notes often
    name the matter in one sentence and give the date or amount in the next."""
    likelihood = model.probabilities(rows)
    order = np.argsort(-likelihood, kind="stable")
    best = int(order[0])
    if likelihood[best] < model.answer_threshold:
        return []
    floor = max(model.answer_threshold, model.keep_ratio * likelihood[best])
    kept = [int(i) for i in order[:MAX_SENTENCES] if likelihood[i] >= floor]
    if rows[best, KIND_PRESENT]:
        # The customer's own documents and a tenant policy both giving the kind of answer
        # asked for disagree, and the customer's own wins (CONTRACT.md): an own sentence
        # not far behind a tenant one goes first, and no tenant sentence of that kind is
        # shown beside it as a second answer.
        if not found[best].own_document:
            own = [int(i) for i in order if found[int(i)].own_document and rows[int(i), KIND_PRESENT]
                   and likelihood[i] >= OWN_OVERRIDE_RATIO * likelihood[best]]
            if own:
                best = own[0]
                kept = [best] + [i for i in kept if i != best]
        if found[best].own_document:
            kept = [i for i in kept if found[i].own_document or not rows[i, KIND_PRESENT]]
    chosen = [found[i] for i in kept]
    following = best + 1
    if (rows[best, KIND_MISSING] and following < len(found) and found[following].passage == found[best].passage
            and rows[following, KIND_PRESENT] and found[following] not in chosen):
        chosen.insert(1, found[following])
    return chosen[:MAX_SENTENCES]


def compose_answer(
    question: str, passages: Sequence[tuple[str, str, bool]], earlier: str | None = None,
    subject: frozenset[str] = frozenset(), model: AnswerModel | None = None,
) -> str:
    """An extractive answer from `(title, text, is the customer's own)` passages
    numbered from 1, cited `[n]`; `earlier` is the question a follow-up follows and
    `subject` the words that name the customer (`chains.ports.Found`)."""
    found = candidates(passages)
    if not found:
        return NOT_FOUND
    model = model or answer_model()
    chosen = select_sentences(found, features(question, found, earlier, subject), model)
    if not chosen:
        return NOT_FOUND
    # Source order reads naturally: a contract's clauses in their own sequence.
    chosen.sort(key=lambda c: c.position)
    return " ".join(f"{clip(c.text)} [{c.passage}]" for c in chosen)
