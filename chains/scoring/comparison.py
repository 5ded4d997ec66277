"""Comparing two scoring models on the same recorded outcomes.

Per model: ROC AUC (ranking), Brier score (calibrated probabilities) and top-decile
lift (the conversion rate of the 10% best-scored leads ÷ the base rate: what a rep
working the top of the list gains). The difference in AUC is tested with DeLong's
test for two correlated ROC curves (DeLong, DeLong & Clarke-Pearson 1988, in Sun &
Xu's fast form): both models score the same leads, so their AUCs are paired, and the
test is exact arithmetic, not a resampling with a seed.

`compare_versions` is the job the service runs in a worker process. A model that was
trained on some of these outcomes must not be scored on them in-sample: the caller
passes, per lead, the probability to use instead (its out-of-fold prediction).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import norm, rankdata
from sklearn.metrics import roc_auc_score

from chains.scoring.calibration import brier_score
from chains.scoring.model import LeadScoringModel

TOP_FRACTION = 0.10


def top_decile_lift(y: np.ndarray, probabilities: np.ndarray) -> tuple[float, float]:
    """(conversion rate of the top 10% by probability, that rate ÷ the base rate)."""
    count = max(1, math.ceil(TOP_FRACTION * len(y)))
    top = np.argsort(-probabilities, kind="stable")[:count]
    rate = float(y[top].mean())
    return rate, rate / float(y.mean())


def evaluate(y: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    rate, lift = top_decile_lift(y, probabilities)
    return {"auc": float(roc_auc_score(y, probabilities)), "brier": brier_score(y, probabilities),
            "top_decile_conversion": rate, "lift_top_decile": lift}


def delong_test(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """AUC(b) − AUC(a), its standard error, 95% interval and two-sided p-value."""
    m, n = int((y == 1).sum()), int((y == 0).sum())
    placements_pos, placements_neg, aucs = [], [], []
    for scores in (a, b):
        pos, neg = scores[y == 1], scores[y == 0]
        ranked_all = rankdata(np.concatenate([pos, neg]))
        ranked_pos, ranked_neg = rankdata(pos), rankdata(neg)
        aucs.append((ranked_all[:m].sum() - m * (m + 1) / 2) / (m * n))
        placements_pos.append((ranked_all[:m] - ranked_pos) / n)
        placements_neg.append(1.0 - (ranked_all[m:] - ranked_neg) / m)
    covariance = np.cov(np.vstack(placements_pos)) / m + np.cov(np.vstack(placements_neg)) / n
    difference = float(aucs[1] - aucs[0])
    variance = float(covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1])
    if variance <= 1e-15:
        return {"auc_difference": difference, "standard_error": 0.0, "ci95_low": difference,
                "ci95_high": difference, "p_value": 1.0 if abs(difference) < 1e-12 else 0.0}
    error = math.sqrt(variance)
    return {"auc_difference": difference, "standard_error": error,
            "ci95_low": difference - 1.959964 * error, "ci95_high": difference + 1.959964 * error,
            "p_value": float(2 * norm.sf(abs(difference) / error))}


def _probabilities(params: dict[str, Any], leads: list[dict[str, Any]],
                   known: Sequence[float | None] | None) -> tuple[np.ndarray, int]:
    """The model's probability per lead, or the given out-of-fold one where there is one;
    and how many were given."""
    predicted = LeadScoringModel.from_params(params).predict_proba(leads)
    if known is None:
        return predicted, 0
    given = np.array([p is not None for p in known])
    return np.where(given, np.array([p if p is not None else 0.0 for p in known]), predicted), int(given.sum())


def compare_versions(
    params_a: dict[str, Any], params_b: dict[str, Any], leads: list[dict[str, Any]], labels: list[int],
    known_a: Sequence[float | None] | None = None, known_b: Sequence[float | None] | None = None,
) -> dict[str, Any]:
    """Each model's metrics on the outcomes and DeLong's test of b against a."""
    y = np.asarray(labels, dtype=int)
    a, given_a = _probabilities(params_a, leads, known_a)
    b, given_b = _probabilities(params_b, leads, known_b)
    return {
        "a": {**evaluate(y, a), "out_of_fold": given_a, "predicted": len(y) - given_a},
        "b": {**evaluate(y, b), "out_of_fold": given_b, "predicted": len(y) - given_b},
        "difference": delong_test(y, a, b),
    }
