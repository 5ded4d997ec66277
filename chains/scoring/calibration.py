"""Whether a model's probabilities mean what they say: Brier score and a reliability table.

A score of 70 should convert about 70% of the time; AUC only says the ranking is good.
The reliability table bins the predictions (10 equal-width bins, scikit-learn's
`calibration_curve`) and compares each bin's mean prediction with its observed rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

RELIABILITY_BINS = 10


@dataclass(frozen=True, slots=True)
class ReliabilityBin:
    lower: float
    upper: float
    count: int
    mean_predicted: float
    observed_rate: float


def brier_score(y: np.ndarray, probabilities: np.ndarray) -> float:
    return float(brier_score_loss(y, probabilities))


def reliability_table(y: np.ndarray, probabilities: np.ndarray, bins: int = RELIABILITY_BINS) -> list[ReliabilityBin]:
    """Non-empty bins only, lowest first."""
    observed, predicted = calibration_curve(y, probabilities, n_bins=bins, strategy="uniform")
    edges = np.linspace(0.0, 1.0, bins + 1)
    # The same bin assignment as calibration_curve, for the counts it does not return.
    counts = np.bincount(np.searchsorted(edges[1:-1], probabilities), minlength=bins)
    filled = np.flatnonzero(counts)
    return [
        ReliabilityBin(float(edges[b]), float(edges[b + 1]), int(counts[b]), float(p), float(o))
        for b, p, o in zip(filled, predicted, observed, strict=True)
    ]


def expected_calibration_error(table: list[ReliabilityBin]) -> float:
    """Count-weighted mean |observed − predicted| over the bins."""
    total = sum(b.count for b in table)
    return sum(b.count * abs(b.observed_rate - b.mean_predicted) for b in table) / max(total, 1)
