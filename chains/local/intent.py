"""Intent and urgency from weighted cue rules: transparent, fast, and evaluated in `eval/`.

Each intent has regular-expression cues with weights; the best-scoring intent wins and
its margin over the runner-up becomes the confidence. Urgency adds up explicit time
cues, outage words, negative intensity, channel and the caller's flags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from chains.schemas import Channel, Intent, Sentiment, Urgency

_INTENT_CUES: dict[Intent, list[tuple[str, float]]] = {
    "cancellation_risk": [
        (r"\bcancel(l?ing|l?ed|lation)?\b", 3.0),
        (r"\b(terminate|end|close) (our|my|the) (account|contract|subscription|plan)\b", 3.0),
        (r"\b(switch(ing)?|mov(e|ing)) to (a |another )?(competitor|vendor|provider)\b", 3.0),
        (r"\bnot (going to|gonna) renew\b|\bwon'?t renew\b|\bunsubscribe\b", 3.0),
        (r"\b(churn|leave|leaving)\b", 1.5),
    ],
    "complaint": [
        (r"\b(unacceptable|terrible|awful|horrible|worst|ridiculous|disappointed|frustrat\w*)\b", 2.0),
        (r"\b(overcharged|double[- ]charged|wrong charge|still (not|hasn'?t|no))\b", 2.5),
        (r"\b(complain\w*|escalat\w*|manager|lawyer)\b", 2.0),
        (r"\b(again|third time|second time|keeps? happening)\b", 1.0),
    ],
    "support_request": [
        (r"\b(error|bug|broken|crash\w*|not working|doesn'?t work|can'?t (log ?in|access|connect))\b", 2.5),
        (r"\b(outage|down|downtime|fail(s|ed|ing)?|issue|problem)\b", 1.5),
        (r"\b(help|how do i|how can i|reset|configure|set ?up|install)\b", 1.2),
    ],
    "pricing_inquiry": [
        (r"\b(pric(e|es|ing)|cost|quote|discount|invoice|billing|plan|tier|per seat)\b", 2.0),
        (r"\bhow much\b", 2.5),
    ],
    "purchase_interest": [
        (r"\b(buy|purchase|sign (up|the contract)|order|upgrade|add (more )?seats|ready to (go|move|start))\b", 2.5),
        (r"\b(interested in|looking for|evaluat\w*|trial|proposal)\b", 1.5),
    ],
    "meeting_request": [
        (r"\b(schedule|book|set up|arrange) (a |an )?(call|meeting|demo|chat)\b", 3.0),
        (r"\b(demo|meeting|call me|calendar|availability|available (on|at|tomorrow))\b", 1.5),
    ],
    "feedback": [
        (r"\b(love|great|awesome|fantastic|impressed|thank(s| you)|recommend|suggest\w*|feature request)\b", 1.5),
        (r"\b(feedback|review|would be nice|wish)\b", 1.5),
    ],
}
_COMPILED = {
    intent: [(re.compile(pattern, re.IGNORECASE), weight) for pattern, weight in cues]
    for intent, cues in _INTENT_CUES.items()
}

_URGENT_TIME = re.compile(
    r"\b(asap|urgent\w*|immediately|right now|today|tonight|by (tomorrow|eod|end of day)|"
    r"deadline|emergency|critical|blocking|as soon as possible)\b",
    re.IGNORECASE,
)
_SOON_TIME = re.compile(r"\b(this week|tomorrow|soon|quickly|waiting|still)\b", re.IGNORECASE)
_OUTAGE = re.compile(r"\b(outage|down|can'?t (log ?in|access)|data loss|security|breach)\b", re.I)
_LIVE_CHANNELS: frozenset[Channel] = frozenset({"call", "chat"})


@dataclass(frozen=True, slots=True)
class IntentResult:
    intent: Intent
    confidence: float
    cues: tuple[str, ...]


def classify_intent(text: str) -> IntentResult:
    scores: dict[Intent, float] = {}
    cues: dict[Intent, list[str]] = {}
    for intent, patterns in _COMPILED.items():
        for pattern, weight in patterns:
            found = pattern.findall(text)
            if found:
                scores[intent] = scores.get(intent, 0.0) + weight * min(len(found), 2)
                match = pattern.search(text)
                if match:
                    cues.setdefault(intent, []).append(match.group(0).lower())
    if not scores:
        return IntentResult("general_inquiry", 0.4, ())
    ranked = sorted(scores.items(), key=lambda item: item[1], reverse=True)
    best, best_score = ranked[0]
    runner_up = ranked[1][1] if len(ranked) > 1 else 0.0
    confidence = 0.5 + 0.5 * (best_score - runner_up) / (best_score + 1.0)
    return IntentResult(best, round(min(confidence, 0.95), 3), tuple(cues[best]))


def assess_urgency(
    text: str,
    *,
    sentiment: Sentiment,
    intent: Intent,
    channel: Channel,
    time_sensitive: bool,
    high_value: bool,
) -> Urgency:
    points = 0.0
    points += 2.0 if _URGENT_TIME.search(text) else 0.0
    points += 1.0 if _SOON_TIME.search(text) else 0.0
    points += 2.0 if _OUTAGE.search(text) else 0.0
    points += 1.5 if sentiment.score <= -0.6 else (0.5 if sentiment.score <= -0.3 else 0.0)
    points += 1.5 if intent in ("cancellation_risk", "complaint") else 0.0
    points += 0.5 if channel in _LIVE_CHANNELS else 0.0
    points += 1.5 if time_sensitive else 0.0
    points += 0.5 if high_value else 0.0
    if points >= 3.5:
        return "high"
    if points >= 1.5:
        return "medium"
    return "low"
