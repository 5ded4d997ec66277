"""A fitted lead-scoring model: an additive logistic regression whose explanations are exact.

The log-odds of a lead is `intercept + Σ w·z`, with `z` the lead's standardised
features (`chains.scoring.features`), and each factor's contribution is `Σ w·z` over
its columns: reasoning comes from the model's own arithmetic, and
`sigmoid(base_log_odds + Σ contributions) = probability` holds exactly. A missing
factor is imputed with the training mean, so it contributes 0 ("an average lead").
Trees would score a little better but have no exact additive explanation, and reps act
on the reasons.

A model is its parameters and nothing else: coefficients, the standardisation (means,
scales), the clip bounds, 30 bootstrap refits and the covariance of the features. They
serialise to JSON (`to_params` / `from_params`, never pickle), so a tenant's model can
be trained in a worker process, stored in the database and loaded by every replica.

Confidence (`interval`): the 90% interval of the lead's probability. Its spread comes
from the bootstrap refits (how much the coefficients move when the training data are
resampled) and from the factors the lead does not provide (each refit's logit is
spread by what those factors could be: Gaussian with the training covariance of the
missing columns, integrated on a fixed grid of normal quantiles, so it is
deterministic). The chain reports `confidence = 1 − (p95 − p5)`, clipped to 0..1: a
complete profile scored by a model trained on plenty of data is near 1; a sparse
profile, or a model trained on few outcomes, is lower. A 30×31 matrix times a vector:
microseconds per lead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import norm

from chains.scoring.features import FEATURE_MAPS, columns_of, encode

PARAMS_FORMAT = 1
INTERVAL_LEVEL = 0.90
# Normal quantiles at the centres of 11 equal-probability slices: the spread a missing
# factor adds to each bootstrap refit's logit, integrated deterministically.
_SPREAD = norm.ppf((np.arange(11) + 0.5) / 11)
_TAIL = (1.0 - INTERVAL_LEVEL) / 2


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
    interval: tuple[float, float]  # the INTERVAL_LEVEL interval of the probability


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)))


def _quantile(ordered: np.ndarray, q: float) -> float:
    """np.quantile's default (linear) on sorted values, without its overhead per call."""
    position = q * (len(ordered) - 1)
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return float(ordered[below] + (ordered[above] - ordered[below]) * (position - below))


def _finite_list(values: np.ndarray) -> list[Any]:
    if not np.all(np.isfinite(values)):
        raise ValueError("model parameters must be finite")
    return values.tolist()  # type: ignore[no-any-return]


class LeadScoringModel:
    """One fitted version. Build it with `chains.scoring.training`, or from stored parameters."""

    def __init__(
        self,
        *,
        version: str,
        features: str,
        means: np.ndarray,
        scale: np.ndarray,
        lowest: np.ndarray,
        highest: np.ndarray,
        intercept: float,
        weights: np.ndarray,
        bootstrap: np.ndarray,
        missing_cov: np.ndarray,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        self.version = version
        self.features = features
        self.encoders = FEATURE_MAPS[features]
        self.columns = columns_of(self.encoders)
        self._starts = np.array([cols.start for cols in self.columns.values()])
        width = max(cols.stop for cols in self.columns.values())
        for name, array, shape in (
            ("means", means, (width,)), ("scale", scale, (width,)), ("lowest", lowest, (width,)),
            ("highest", highest, (width,)), ("weights", weights, (width,)),
            ("missing_cov", missing_cov, (width, width)),
        ):
            if np.shape(array) != shape:
                raise ValueError(f"{name} has shape {np.shape(array)}, expected {shape} for features {features}")
        if bootstrap.ndim != 2 or bootstrap.shape[1] != width + 1 or bootstrap.shape[0] < 2:
            raise ValueError(f"bootstrap must be (refits, {width + 1}), got {bootstrap.shape}")
        self.means, self.scale = np.asarray(means, float), np.asarray(scale, float)
        self.lowest, self.highest = np.asarray(lowest, float), np.asarray(highest, float)
        self.intercept = float(intercept)
        self.weights = np.asarray(weights, float)
        self.bootstrap = np.asarray(bootstrap, float)
        self.missing_cov = np.asarray(missing_cov, float)
        self.metrics: dict[str, Any] = dict(metrics or {})

    # -- features -------------------------------------------------------------------

    def standardized(self, leads: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """Standardised rows (a missing factor at 0, the training mean) and the mask of
        provided columns. Values beyond what training saw are scored as its extremes: a
        linear model extrapolated to a budget of 1e300 would only overflow."""
        raw, present = encode(leads, self.encoders, self.columns)
        filled = np.clip(np.where(present, raw, self.means), self.lowest, self.highest)
        return (filled - self.means) / self.scale, present

    # -- scoring --------------------------------------------------------------------

    def predict_proba(self, leads: list[dict[str, Any]]) -> np.ndarray:
        z, _ = self.standardized(leads)
        return _sigmoid(self.intercept + z @ self.weights)

    def interval(self, z: np.ndarray, present: np.ndarray) -> tuple[float, float]:
        """The INTERVAL_LEVEL interval of one lead's probability (see the module docstring)."""
        refits = self.bootstrap
        centres = refits[:, 0] + refits[:, 1:] @ z
        missing = np.flatnonzero(~present)
        if len(missing):
            w = refits[:, 1:][:, missing]
            variance = ((w @ self.missing_cov[missing][:, missing]) * w).sum(axis=1)
            logits = centres[:, None] + np.sqrt(np.maximum(variance, 0.0))[:, None] * _SPREAD[None, :]
        else:
            logits = centres
        ordered = np.sort(_sigmoid(logits.ravel()))
        return _quantile(ordered, _TAIL), _quantile(ordered, 1.0 - _TAIL)

    def explain(self, lead: dict[str, Any]) -> Explanation:
        z_rows, present_rows = self.standardized([lead])
        z, present = z_rows[0], present_rows[0]
        log_odds = np.add.reduceat(self.weights * z, self._starts).tolist()
        provided = np.logical_and.reduceat(present, self._starts).tolist()
        contributions = [
            FactorContribution(factor=factor, value=lead.get(factor), log_odds=log_odds[i], provided=provided[i])
            for i, factor in enumerate(self.columns)
        ]
        logit = self.intercept + sum(c.log_odds for c in contributions)
        return Explanation(
            probability=1.0 / (1.0 + math.exp(-logit)),
            base_log_odds=self.intercept,
            contributions=contributions,
            completeness=sum(c.provided for c in contributions) / len(contributions),
            interval=self.interval(z, present),
        )

    # -- storage --------------------------------------------------------------------

    def to_params(self) -> dict[str, Any]:
        """Everything needed to rebuild this model, as JSON-able values."""
        return {
            "format": PARAMS_FORMAT,
            "version": self.version,
            "features": self.features,
            "means": _finite_list(self.means),
            "scale": _finite_list(self.scale),
            "lowest": _finite_list(self.lowest),
            "highest": _finite_list(self.highest),
            "intercept": float(self.intercept),
            "weights": _finite_list(self.weights),
            "bootstrap": _finite_list(self.bootstrap),
            "missing_cov": _finite_list(self.missing_cov),
            "metrics": self.metrics,
        }

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> LeadScoringModel:
        if params.get("format") != PARAMS_FORMAT:
            raise ValueError(f"unsupported model parameters format {params.get('format')!r}")
        if params.get("features") not in FEATURE_MAPS:
            raise ValueError(f"unknown feature map {params.get('features')!r}")
        arrays = {name: np.asarray(params[name], dtype=float) for name in (
            "means", "scale", "lowest", "highest", "weights", "bootstrap", "missing_cov")}
        if not all(np.all(np.isfinite(array)) for array in arrays.values()):
            raise ValueError("model parameters must be finite")
        return cls(version=str(params["version"]), features=str(params["features"]),
                   intercept=float(params["intercept"]), metrics=params.get("metrics"), **arrays)
