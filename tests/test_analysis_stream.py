"""The LLM's JSON analysis read as it streams: whatever the split into tokens and
whatever the summary holds (quotes, escapes, non-ASCII, control characters), the
summary goes out exactly as far as the answer so far says it, and no further."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic_core import from_json

from chains.structured import AnalysisStream, LlmClassification

LABELS = {
    "sentiment": {"label": "negative", "score": -0.4},
    "intent": "support_request",
    "urgency": "high",
    "confidence": {"sentiment": 0.8, "intent": 0.9, "urgency": 0.7},
}
REST = {
    "pain_points": ["slow \"dashboard\""],
    "preferences": ["a fix today"],
    "next_best_actions": [{"action": "call_back", "description": "Call today.", "priority": "high",
                           "confidence": 0.8, "estimated_impact": 0.6, "next_steps": ["call"], "reason": "Blocked."}],
}
# Mostly words, as a model writes; sometimes what JSON has to escape.
WORDS = st.lists(st.one_of(st.sampled_from(["the ", "report ", "is ", "due ", "today. ", "café ", "naïve "]),
                           st.text(min_size=1, max_size=4)), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(words=WORDS, labels=st.permutations(list(LABELS)), later=st.permutations([*REST, "summary"]),
       ascii_only=st.booleans(),
       cuts=st.lists(st.integers(min_value=1, max_value=4_000), max_size=120), word_tokens=st.booleans())
def test_the_summary_streams_exactly_as_far_as_the_answer_so_far_says(
    words: list[str], labels: list[str], later: list[str], ascii_only: bool, cuts: list[int], word_tokens: bool
) -> None:
    """The labels come first (a later key before them is a schema violation); the rest, summary
    included, in any order."""
    summary, order = "".join(words), labels + later
    fields = {**LABELS, **REST, "summary": summary}
    answer = json.dumps({key: fields[key] for key in order}, ensure_ascii=ascii_only)
    if word_tokens:  # the summary's words as tokens, as models stream them
        start = answer.index(json.dumps(summary, ensure_ascii=ascii_only)[:1], answer.index('"summary"') + 9)
        tokens = [answer[:start + 1], *(json.dumps(w, ensure_ascii=ascii_only)[1:-1] for w in words),
                  answer[start + 1 + len(json.dumps(summary, ensure_ascii=ascii_only)[1:-1]):]]
        assert "".join(tokens) == answer
    else:
        points = sorted({cut % len(answer) for cut in cuts} | {0, len(answer)})
        tokens = [answer[a:b] for a, b in zip(points, points[1:], strict=False)]

    stream, sent, classifications, so_far = AnalysisStream(), "", [], ""
    for token in tokens:
        so_far += token
        classification, delta = stream.feed(token)
        sent += delta
        if classification is not None:
            classifications.append(classification)
        partial = from_json(so_far, allow_partial="trailing-strings")
        expected = partial.get("summary", "") if classifications else ""
        assert sent == expected, (token, sent[-40:], expected[-40:])
    assert classifications == [LlmClassification.model_validate(LABELS)]
    assert sent == summary and stream.finish().summary == summary
