"""Two versions of an additive lead-scoring model whose explanations are exact.

Both are logistic regressions over per-factor feature groups, so the log-odds of a
lead is `intercept + Σ w·x` and each factor's contribution is `Σ w·(x − mean)` over
its columns: reasoning comes from the model's own arithmetic, and
`sigmoid(base_log_odds + Σ contributions) = probability` holds exactly.

- `logreg-v1`: raw counts and sizes, standardised.
- `logreg-v2`: diminishing returns (log1p), recency decay and budget in thousands,
  which the funnel data rewards (see `eval/`). Trees would score a little better but
  have no exact additive explanation, and reps act on the reasons.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from chains.scoring.synthetic import INDUSTRIES, SOURCES, generate_leads

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
VERSIONS: dict[str, tuple[dict[str, Encoder], float]] = {
    "logreg-v1": (V1_ENCODERS, 1.0),
    "logreg-v2": (V2_ENCODERS, 0.5),
}
TRAINING_SIZE = 6_000
HOLDOUT_SIZE = 2_000


@dataclass(frozen=True, slots=True)
class FactorContribution:
    factor: str
    value: Any
    log_odds: float
    provided: bool


@dataclass(frozen=True, slots=True)
class Explanation:
    probability: float
    base_log_odds: float
    contributions: list[FactorContribution]
    completeness: float


class LeadScoringModel:
    """One trained version: imputes missing factors with training means (contribution 0)."""

    def __init__(self, version: str, encoders: dict[str, Encoder], regularization: float) -> None:
        self.version = version
        self.encoders = encoders
        self.regularization = regularization
        self.columns: dict[str, slice] = {}
        self.means = np.zeros(0)
        self.scale = np.ones(0)
        self.lowest = np.zeros(0)
        self.highest = np.zeros(0)
        self.classifier = LogisticRegression(C=regularization, max_iter=2_000)
        self.holdout_auc: float | None = None

    def _raw_rows(self, leads: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        rows, present = [], []
        for lead in leads:
            row: list[float] = []
            mask: list[float] = []
            for factor in FACTORS:
                value = lead.get(factor)
                if value is None:
                    cols = self.columns[factor]
                    encoded = [math.nan] * (cols.stop - cols.start)
                else:
                    encoded = self.encoders[factor](value)
                row.extend(encoded)
                mask.extend([0.0 if value is None else 1.0] * len(encoded))
            rows.append(row)
            present.append(mask)
        return np.asarray(rows, dtype=float), np.asarray(present, dtype=bool)

    def fit(self, leads: list[dict[str, Any]], labels: np.ndarray) -> LeadScoringModel:
        start = 0
        for factor in FACTORS:
            width = len(self.encoders[factor](_placeholder(factor)))
            self.columns[factor] = slice(start, start + width)
            start += width
        raw, _ = self._raw_rows(leads)
        self.means = np.nanmean(raw, axis=0)
        # Values beyond what training saw are scored as its extremes: a linear model
        # extrapolated to a budget of 1e300 would only produce overflowing log-odds.
        self.lowest, self.highest = np.nanmin(raw, axis=0), np.nanmax(raw, axis=0)
        filled = np.where(np.isnan(raw), self.means, raw)
        self.scale = filled.std(axis=0)
        self.scale[self.scale == 0] = 1.0
        self.classifier.fit((filled - self.means) / self.scale, labels)
        return self

    def _filled(self, raw: np.ndarray) -> np.ndarray:
        return np.clip(np.where(np.isnan(raw), self.means, raw), self.lowest, self.highest)

    def explain(self, lead: dict[str, Any]) -> Explanation:
        raw, present = self._raw_rows([lead])
        filled = self._filled(raw)[0]
        centred = (filled - self.means) / self.scale
        weights = self.classifier.coef_[0]
        base = float(self.classifier.intercept_[0])
        contributions = [
            FactorContribution(
                factor=factor,
                value=lead.get(factor),
                log_odds=float(np.dot(weights[cols], centred[cols])),
                provided=bool(present[0][cols].all()),
            )
            for factor, cols in self.columns.items()
        ]
        logit = base + sum(c.log_odds for c in contributions)
        return Explanation(
            probability=1.0 / (1.0 + math.exp(-logit)),
            base_log_odds=base,
            contributions=contributions,
            completeness=sum(c.provided for c in contributions) / len(contributions),
        )

    def predict_proba(self, leads: list[dict[str, Any]]) -> np.ndarray:
        raw, _ = self._raw_rows(leads)
        return self.classifier.predict_proba((self._filled(raw) - self.means) / self.scale)[:, 1]


def _placeholder(factor: str) -> Any:
    return {"industry": INDUSTRIES[0], "source": SOURCES[0], "job_title": "", "demo_requested": False}.get(
        factor, 0.0
    )


@lru_cache(maxsize=4)
def train_models(seed: int = 7) -> dict[str, LeadScoringModel]:
    """Trains every version on the same synthetic funnel and records its held-out AUC.

    Deterministic for a seed, so one training serves every app in the process."""
    train = generate_leads(TRAINING_SIZE, seed=seed)
    holdout = generate_leads(HOLDOUT_SIZE, seed=seed + 1)
    models: dict[str, LeadScoringModel] = {}
    for version, (encoders, regularization) in VERSIONS.items():
        model = LeadScoringModel(version, encoders, regularization).fit(train.leads, train.converted)
        model.holdout_auc = float(roc_auc_score(holdout.converted, model.predict_proba(holdout.leads)))
        models[version] = model
    return models
