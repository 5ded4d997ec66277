"""What a customer said, pulled out of a message: asks, pain points, preferences,
deadlines and amounts. The local summary and the `pain_points`/`preferences` fields are
built from these, so a rep reads the message's substance, not one quoted sentence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from chains.text import clip, split_sentences

_ASK = re.compile(
    r"\?|^\s*(please|pls|plz|kindly|can you|could you|would you|will you|can we|could we|may we|"
    r"i need|we need|i want|we want|i'd like|we'd like|i would like|we would like|let me know|"
    r"send|share|call|email|fix|cancel|book|schedule|add|remove|change|update|refund|confirm)\b",
    re.IGNORECASE,
)
_PROBLEM = re.compile(
    r"\b(not working|doesn'?t work|isn'?t working|broken|error|fail\w*|down|outage|crash\w*|bug|wrong|"
    r"late|delay\w*|missing|lost|spam|bounc\w*|charged|overcharged|double[- ]charged|can'?t|cannot|"
    r"unable|stuck|slow|locked out|no (reply|response|answer)|still (not|no|waiting)|again|"
    r"disappoint\w*|frustrat\w*|unacceptable|annoy\w*|complain\w*|mess)\b",
    re.IGNORECASE,
)
_PREFERENCE = re.compile(
    r"\b(prefer\w*|rather|instead|would like|'d like|only want|don'?t want|please don'?t|no more|"
    r"would love|wish|ideally|keep (it|us|me)|via (email|phone|text|sms|whatsapp)|by (email|phone|text))\b",
    re.IGNORECASE,
)
_DEADLINE = re.compile(
    r"\b(today|tonight|tomorrow|tmrw|asap|right now|immediately|this (morning|afternoon|evening|week|weekend|month)|"
    r"next (week|month|monday|tuesday|wednesday|thursday|friday)|end of (the )?(day|week|month|quarter|year)|eod|"
    r"by (monday|tuesday|wednesday|thursday|friday|saturday|sunday|noon|\d{1,2}(:\d\d)? ?(am|pm)?)|"
    r"(on |before |by )?(mon|tues?|wed|thu(rs)?|fri|sat|sun)[a-z]*day|"
    r"(jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.? \d{1,2}(st|nd|rd|th)?|"
    r"\d{1,2}(st|nd|rd|th)? (of )?(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*|"
    r"\d{1,2}/\d{1,2}(/\d{2,4})?|\d{1,2}(:\d\d)? ?(am|pm)|within \d+ (hours?|days?))\b",
    re.IGNORECASE,
)
_AMOUNT = re.compile(
    r"(?:[$€£]\s?\d[\d,]*(?:\.\d+)?(?:\s?[km])?|\b\d[\d,]*(?:\.\d+)?\s?(?:usd|eur|gbp|dollars|euros|pounds|%|percent)"
    r"|\b\d[\d,]*\s(?:seats?|users?|licen[cs]es?|units?|copies|flyers|posts|emails|leads|orders|locations|months?)\b)",
    re.IGNORECASE,
)


@lru_cache(maxsize=1)
def _vader() -> SentimentIntensityAnalyzer:
    return SentimentIntensityAnalyzer()


@dataclass(frozen=True)
class Substance:
    asks: list[str] = field(default_factory=list)
    pain_points: list[str] = field(default_factory=list)
    preferences: list[str] = field(default_factory=list)
    deadlines: list[str] = field(default_factory=list)
    amounts: list[str] = field(default_factory=list)


def _unique(values: list[str], limit: int) -> list[str]:
    seen: list[str] = []
    for value in values:
        if value.lower() not in (s.lower() for s in seen):
            seen.append(value)
    return seen[:limit]


def extract(text: str, *, limit: int = 3) -> Substance:
    sentences = split_sentences(text) or [text.strip()]
    asks, pains, preferences = [], [], []
    for sentence in sentences:
        is_problem = bool(_PROBLEM.search(sentence)) or _vader().polarity_scores(sentence)["compound"] <= -0.4
        if is_problem:
            pains.append(clip(sentence, 160))
        if _PREFERENCE.search(sentence):
            preferences.append(clip(sentence, 160))
        if _ASK.search(sentence) and not is_problem:
            asks.append(clip(sentence, 160))
    if not asks:
        asks = [clip(s, 160) for s in sentences if _ASK.search(s)]
    return Substance(
        asks=_unique(asks, limit),
        pain_points=_unique(pains, limit),
        preferences=_unique(preferences, limit),
        deadlines=_unique([m.group(0).strip() for m in _DEADLINE.finditer(text)], limit),
        amounts=_unique([m.group(0).strip() for m in _AMOUNT.finditer(text)], limit),
    )
