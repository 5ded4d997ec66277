"""Business-impact cues, as *features* a learned model weighs (not rules that decide).

Urgency is about business impact, which word n-grams see only word by word: a deadline
today, a blocked business, money being lost, a legal threat, churn, a whole team or
every customer affected. Each cue is one binary feature, with the channel one-hot.
"""

from __future__ import annotations

import re

import numpy as np

CHANNELS = ("email", "sms", "call", "chat", "social", "web")
_CUES = {
    "now": r"\b(today|tonight|this (morning|afternoon|evening)|right now|asap|a\.s\.a\.p|immediately|urgent(ly)?|"
           r"within (the|an) hour|by (eod|end of (the )?day|noon|tonight|\d{1,2} ?(am|pm))|in (an|one|two|\d+) hours?|"
           r"rn|before (noon|\d))\b",
    "soon": r"\b(tomorrow|tmrw|tmr|this week|by (friday|monday|tuesday|wednesday|thursday)|soon|quickly)\b",
    "blocked": r"\b(down|outage|offline|dead|not working|isn'?t working|doesn'?t work|won'?t (load|open|send)|broken|"
               r"can'?t (log ?in|access|send|work|publish|post|pay)|cannot|locked out|blocked|stuck|crash\w*|"
               r"error|fail\w*|404|500|white screen|bounc\w*)\b",
    "scope": r"\b(everyone|every(body| customer| order| client)|all (of )?(our|my|the) (customers|users|team|staff|"
             r"clients|emails|orders)|whole (team|site|shop|store)|entire|nobody|no one|none of)\b",
    "money": r"\b(losing|lost|loss|revenue|sales|orders?|refund\w*|charged|overcharged|double[- ]?charged|"
             r"chargeback|\$\s?\d|€\s?\d|£\s?\d|\d+ ?(usd|eur|gbp|dollars|euros))\b",
    "legal": r"\b(lawyer|legal|lawsuit|sue|attorney|solicitor|gdpr|breach|hacked|compromised|phishing|fraud|"
             r"data protection|regulator|trading standards)\b",
    "churn": r"\b(cancel\w*|terminat\w*|switch(ing)? to|leave|leaving|won'?t renew|not renew\w*|close (my|our) account|"
             r"end (the|our) contract|downgrad\w*|moving to)\b",
    "waiting": r"\b(still|again|third time|second time|(\d+|two|three|four|five) (days|weeks)|no (reply|response|"
               r"answer)|waiting|chased|chasing|follow(ing)? up)\b",
    "exclaim": r"!{2,}|\b[A-Z]{4,}\b",
    "question": r"\?",
}
_COMPILED = tuple(re.compile(pattern, re.IGNORECASE if name != "exclaim" else 0) for name, pattern in _CUES.items())
CUE_NAMES = (*_CUES, *(f"channel_{channel}" for channel in CHANNELS))


def cue_vector(text: str, channel: str) -> list[float]:
    return [1.0 if pattern.search(text) else 0.0 for pattern in _COMPILED] + [
        1.0 if channel == option else 0.0 for option in CHANNELS
    ]


def cue_matrix(rows: list[tuple[str, str]]) -> np.ndarray:
    """`(text, channel)` rows → one row of binary cue features each."""
    return np.asarray([cue_vector(text, channel) for text, channel in rows], dtype=np.float64)
