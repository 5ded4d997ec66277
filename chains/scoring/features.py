"""How a lead becomes numbers: the two feature maps the scoring models are built on.

- `v1`: raw counts and sizes (standardised by the model).
- `v2`: diminishing returns (log1p), recency decay and budget in thousands.

A map is named in a stored model's parameters, so a model trained in another process
(or another replica, or last month) is rebuilt with exactly the transforms it was
fitted on; the functions themselves are code, never stored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from chains.scoring.synthetic import INDUSTRIES, SOURCES

FACTORS = (
    "company_size", "industry", "job_title", "source", "budget_usd", "email_opens_30d",
    "email_clicks_30d", "website_visits_30d", "pricing_page_views_30d", "demo_requested",
    "days_since_last_activity", "meetings_held",
)
_SENIORITY = (
    (re.compile(r"\b(chief|ceo|cto|cmo|cfo|coo|founder|owner|president|partner)\b", re.I), 3.0),
    (re.compile(r"\b(vp|vice president|head|director)\b", re.I), 2.0),
    (re.compile(r"\b(manager|lead|principal)\b", re.I), 1.0),
)


def seniority(title: str) -> float:
    for pattern, level in _SENIORITY:
        if pattern.search(title):
            return level
    return 0.0


def _one_hot(value: Any, options: tuple[str, ...]) -> list[float]:
    return [1.0 if value == option else 0.0 for option in options]


Encoder = Callable[[Any], list[float]]


def _number(transform: Callable[[float], float]) -> Encoder:
    return lambda value: [transform(float(value))]


V1_ENCODERS: dict[str, Encoder] = {
    "company_size": _number(lambda v: v),
    "industry": lambda v: _one_hot(v, INDUSTRIES),
    "job_title": lambda v: [seniority(str(v))],
    "source": lambda v: _one_hot(v, SOURCES),
    "budget_usd": _number(lambda v: v),
    "email_opens_30d": _number(lambda v: v),
    "email_clicks_30d": _number(lambda v: v),
    "website_visits_30d": _number(lambda v: v),
    "pricing_page_views_30d": _number(lambda v: v),
    "demo_requested": lambda v: [1.0 if v else 0.0],
    "days_since_last_activity": _number(lambda v: v),
    "meetings_held": _number(lambda v: v),
}
V2_ENCODERS: dict[str, Encoder] = {
    **V1_ENCODERS,
    "company_size": _number(lambda v: math.log1p(v)),
    "budget_usd": _number(lambda v: math.log1p(v / 1000)),
    "email_opens_30d": _number(math.log1p),
    "email_clicks_30d": _number(math.log1p),
    "website_visits_30d": _number(math.log1p),
    "pricing_page_views_30d": _number(math.log1p),
    "days_since_last_activity": _number(lambda v: math.exp(-v / 14.0)),
    "meetings_held": _number(math.log1p),
}
FEATURE_MAPS: dict[str, dict[str, Encoder]] = {"v1": V1_ENCODERS, "v2": V2_ENCODERS}
_PLACEHOLDERS = {"industry": INDUSTRIES[0], "source": SOURCES[0], "job_title": "", "demo_requested": False}


def columns_of(encoders: Mapping[str, Encoder]) -> dict[str, slice]:
    """Which columns of the encoded row belong to each factor, in `FACTORS` order."""
    columns: dict[str, slice] = {}
    start = 0
    for factor in FACTORS:
        width = len(encoders[factor](_PLACEHOLDERS.get(factor, 0.0)))
        columns[factor] = slice(start, start + width)
        start += width
    return columns


def encode(
    leads: Sequence[Mapping[str, Any]], encoders: Mapping[str, Encoder], columns: Mapping[str, slice]
) -> tuple[np.ndarray, np.ndarray]:
    """Encoded rows with NaN where a factor is missing, and the mask of provided columns."""
    width = max(cols.stop for cols in columns.values())
    raw = np.full((len(leads), width), np.nan)
    present = np.zeros((len(leads), width), dtype=bool)
    for row, lead in enumerate(leads):
        for factor, cols in columns.items():
            value = lead.get(factor)
            if value is not None:
                raw[row, cols] = encoders[factor](value)
                present[row, cols] = True
    return raw, present
