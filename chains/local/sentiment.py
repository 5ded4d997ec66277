"""Sentiment from VADER's lexicon (shipped inside vaderSentiment), tuned for CRM text.

VADER's compound score is already in −1..1; the ±0.05 cut-offs are its authors'
recommended thresholds (Hutto & Gilbert, 2014).
"""

from __future__ import annotations

from functools import lru_cache

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from chains.schemas import Sentiment

# Business words VADER's social-media lexicon does not score, on its −4..4 valence scale.
CRM_LEXICON = {
    "refund": -1.5,
    "cancel": -1.8,
    "cancellation": -1.8,
    "unsubscribe": -1.5,
    "overcharged": -2.5,
    "broken": -2.0,
    "outage": -2.5,
    "downtime": -2.0,
    "bug": -1.5,
    "crash": -2.0,
    "crashes": -2.0,
    "crashing": -2.0,
    "delay": -1.2,
    "delayed": -1.4,
    "late": -1.0,
    "waiting": -0.8,
    "escalate": -1.5,
    "lawyer": -2.0,
    "churn": -1.5,
    "competitor": -0.6,
    "expensive": -1.2,
    "renew": 1.2,
    "upgrade": 1.4,
    "recommend": 1.5,
    "referral": 1.2,
    "seamless": 1.8,
    "smooth": 1.2,
    "impressed": 2.2,
    "thrilled": 2.6,
    # Politeness in business mail is not sentiment: "please send the invoice" is neutral.
    "please": 0.0,
}
NEUTRAL_BAND = 0.05


@lru_cache(maxsize=1)
def _analyzer() -> SentimentIntensityAnalyzer:
    analyzer = SentimentIntensityAnalyzer()
    analyzer.lexicon.update(CRM_LEXICON)
    return analyzer


def analyze_sentiment(text: str) -> Sentiment:
    compound = float(_analyzer().polarity_scores(text)["compound"])
    if compound >= NEUTRAL_BAND:
        label = "positive"
    elif compound <= -NEUTRAL_BAND:
        label = "negative"
    else:
        label = "neutral"
    return Sentiment(label=label, score=round(compound, 4))
