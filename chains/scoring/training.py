"""Fitting lead-scoring models: the shared priors on synthetic data, a tenant's on its outcomes.

One fitter serves both: a logistic regression minimising
`Σ log-loss + λ/2 · ‖w − w₀‖²` (the intercept is not penalised), solved with L-BFGS.

- A shared prior has `w₀ = 0` and `λ = 1/C` (what scikit-learn's `C` means).
- A tenant model starts from its prior: the same feature map, scales and feature
  covariance, and `w₀` = the prior's weights, so with few outcomes it stays close to
  the prior and with many it moves as far as the tenant's outcomes justify (a Gaussian
  prior on each standardised coefficient, centred on the shared model's). Its own
  means (the tenant's average lead) and intercept (the tenant's base rate) are its own.
  `λ` is chosen from `TENANT_PENALTIES` by cross-validated log-loss on the tenant's
  outcomes only, so nothing is tuned on an evaluation set.

Every fit also records out-of-fold predictions (stratified 5-fold, fewer folds when a
class has fewer than 5 outcomes) for honest metrics, and 30 bootstrap refits (stratified
resamples) that the model uses for its confidence intervals. `train_tenant_model` is
the job the service runs in a worker process: plain data in, JSON-able data out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit
from sklearn.model_selection import StratifiedKFold

from chains.scoring.calibration import brier_score
from chains.scoring.features import FEATURE_MAPS, columns_of, encode
from chains.scoring.model import LeadScoringModel

BOOTSTRAP_REFITS = 30
CV_FOLDS = 5
TENANT_PENALTIES = (1.0, 3.0, 10.0, 30.0, 100.0)


@dataclass(frozen=True, slots=True)
class Standardization:
    means: np.ndarray
    scale: np.ndarray
    lowest: np.ndarray
    highest: np.ndarray
    missing_cov: np.ndarray

    def apply(self, raw: np.ndarray, present: np.ndarray) -> np.ndarray:
        filled = np.clip(np.where(present, raw, self.means), self.lowest, self.highest)
        return np.asarray((filled - self.means) / self.scale)


@dataclass(frozen=True, slots=True)
class Fit:
    model: LeadScoringModel
    out_of_fold: np.ndarray | None  # one probability per training lead, None without CV


def standardization_of(raw: np.ndarray, present: np.ndarray) -> Standardization:
    """Means, scales and clip bounds of the observed values, and the covariance of the
    standardised columns over the rows where both are present (pairwise)."""
    observed = present.any(axis=0)
    masked = np.where(present, raw, np.nan)
    with np.errstate(all="ignore"):
        means = np.where(observed, np.nanmean(masked, axis=0), 0.0)
        lowest = np.where(observed, np.nanmin(np.where(present, raw, np.inf), axis=0), 0.0)
        highest = np.where(observed, np.nanmax(np.where(present, raw, -np.inf), axis=0), 0.0)
    filled = np.where(present, raw, means)
    scale = filled.std(axis=0)
    scale[scale == 0] = 1.0
    return Standardization(means, scale, lowest, highest, _missing_covariance(raw, present, means, scale))


def _missing_covariance(raw: np.ndarray, present: np.ndarray, means: np.ndarray, scale: np.ndarray) -> np.ndarray:
    centred = np.where(present, (raw - means) / scale, 0.0)
    both = present.T.astype(float) @ present.astype(float)
    cov = (centred.T @ centred) / np.maximum(both - 1.0, 1.0)
    cov = (cov + cov.T) / 2
    eigenvalues, vectors = np.linalg.eigh(cov)  # pairwise estimates need not be PSD: make it so
    return np.asarray((vectors * np.maximum(eigenvalues, 0.0)) @ vectors.T)


def fit_logistic(
    z: np.ndarray, y: np.ndarray, penalty: float, center: np.ndarray | None = None,
    start: np.ndarray | None = None,
) -> np.ndarray:
    """`[intercept, *weights]` minimising `Σ log-loss + penalty/2 · ‖w − center‖²`."""
    n, d = z.shape
    center = np.zeros(d) if center is None else center
    design = np.hstack([np.ones((n, 1)), z])
    target = y.astype(float)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        logits = design @ theta
        shift = theta[1:] - center
        loss = float(np.sum(np.logaddexp(0.0, logits) - target * logits) + 0.5 * penalty * shift @ shift)
        gradient = design.T @ (expit(logits) - target)
        gradient[1:] += penalty * shift
        return loss, gradient

    if start is None:
        rate = np.clip(target.mean(), 1e-3, 1 - 1e-3)
        start = np.concatenate([[np.log(rate / (1 - rate))], center])
    result = minimize(objective, start, jac=True, method="L-BFGS-B", options={"maxiter": 2_000})
    return np.asarray(result.x)


def _folds(y: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]] | None:
    minority = int(min(y.sum(), len(y) - y.sum()))
    if minority < 2:
        return None
    splitter = StratifiedKFold(n_splits=min(CV_FOLDS, minority), shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y))


def out_of_fold(
    z: np.ndarray, y: np.ndarray, penalty: float, center: np.ndarray | None, seed: int
) -> np.ndarray | None:
    """Each lead's probability from a fit that never saw it (None if a class has < 2 leads)."""
    folds = _folds(y, seed)
    if folds is None:
        return None
    predictions = np.zeros(len(y))
    for train, held_out in folds:
        theta = fit_logistic(z[train], y[train], penalty, center)
        predictions[held_out] = expit(theta[0] + z[held_out] @ theta[1:])
    return predictions


def bootstrap_refits(
    z: np.ndarray, y: np.ndarray, penalty: float, center: np.ndarray | None, start: np.ndarray,
    seed: int, refits: int = BOOTSTRAP_REFITS,
) -> np.ndarray:
    """Refits on stratified resamples (each keeps the class counts, so both classes are
    always present), started from the full fit: `(refits, 1 + features)`."""
    rng = np.random.default_rng(seed)
    positives, negatives = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    rows = []
    for _ in range(refits):
        sample = np.concatenate([rng.choice(positives, len(positives)), rng.choice(negatives, len(negatives))])
        rows.append(fit_logistic(z[sample], y[sample], penalty, center, start))
    return np.vstack(rows)


def _metrics(y: np.ndarray, predictions: np.ndarray | None, folds: int | None) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    counts = {"training_size": int(len(y)), "won": int(y.sum()), "lost": int(len(y) - y.sum())}
    if predictions is None:
        return {**counts, "cv_auc": None, "brier": None, "cv_folds": None}
    return {**counts, "cv_auc": float(roc_auc_score(y, predictions)), "brier": brier_score(y, predictions),
            "cv_folds": folds}


def _model(version: str, features: str, std: Standardization, theta: np.ndarray, refits: np.ndarray,
           metrics: dict[str, Any]) -> LeadScoringModel:
    return LeadScoringModel(
        version=version, features=features, means=std.means, scale=std.scale, lowest=std.lowest,
        highest=std.highest, intercept=float(theta[0]), weights=theta[1:], bootstrap=refits,
        missing_cov=std.missing_cov, metrics=metrics,
    )


def fit_prior(
    version: str, features: str, penalty: float, leads: list[dict[str, Any]], labels: np.ndarray, seed: int = 7
) -> Fit:
    """A shared model: standardised on its own data, ridge-penalised towards zero."""
    encoders = FEATURE_MAPS[features]
    raw, present = encode(leads, encoders, columns_of(encoders))
    std = standardization_of(raw, present)
    z, y = std.apply(raw, present), np.asarray(labels, dtype=int)
    theta = fit_logistic(z, y, penalty)
    oof = out_of_fold(z, y, penalty, None, seed)
    refits = bootstrap_refits(z, y, penalty, None, theta, seed)
    folds = _folds(y, seed)
    return Fit(_model(version, features, std, theta, refits,
                      {**_metrics(y, oof, len(folds) if folds else None), "penalty": penalty}), oof)


def _tenant_standardization(prior: LeadScoringModel, raw: np.ndarray, present: np.ndarray) -> Standardization:
    """The prior's scales and feature covariance (so the prior's weights mean the same
    thing here), the tenant's own means and widened clip bounds."""
    own = standardization_of(raw, present)
    observed = present.any(axis=0)
    return Standardization(
        means=np.where(observed, own.means, prior.means),
        scale=prior.scale,
        lowest=np.where(observed, np.minimum(own.lowest, prior.lowest), prior.lowest),
        highest=np.where(observed, np.maximum(own.highest, prior.highest), prior.highest),
        missing_cov=prior.missing_cov,
    )


def _choose_penalty(z: np.ndarray, y: np.ndarray, center: np.ndarray, seed: int) -> tuple[float, np.ndarray | None]:
    """The penalty with the lowest cross-validated log-loss, and its out-of-fold predictions."""
    best: tuple[float, float, np.ndarray | None] | None = None
    for penalty in TENANT_PENALTIES:
        oof = out_of_fold(z, y, penalty, center, seed)
        if oof is None:
            return TENANT_PENALTIES[len(TENANT_PENALTIES) // 2], None
        clipped = np.clip(oof, 1e-12, 1 - 1e-12)
        loss = float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)))
        if best is None or loss < best[0]:
            best = (loss, penalty, oof)
    assert best is not None
    return best[1], best[2]


def fit_tenant(
    prior: LeadScoringModel, version: str, leads: Sequence[dict[str, Any]], labels: np.ndarray, seed: int = 7
) -> Fit:
    """A tenant's own model, started from `prior` (see the module docstring)."""
    y = np.asarray(labels, dtype=int)
    if y.min() == y.max():
        raise ValueError("a tenant model needs both won and lost outcomes")
    raw, present = encode(list(leads), prior.encoders, prior.columns)
    std = _tenant_standardization(prior, raw, present)
    z = std.apply(raw, present)
    penalty, oof = _choose_penalty(z, y, prior.weights, seed)
    theta = fit_logistic(z, y, penalty, prior.weights)
    refits = bootstrap_refits(z, y, penalty, prior.weights, theta, seed)
    folds = _folds(y, seed)
    metrics = {**_metrics(y, oof, len(folds) if folds else None), "penalty": penalty, "prior": prior.version}
    return Fit(_model(version, prior.features, std, theta, refits, metrics), oof)


def train_tenant_model(
    prior_params: dict[str, Any], version: str, leads: list[dict[str, Any]], labels: list[int], seed: int = 7
) -> dict[str, Any]:
    """The worker-process job: the new model's parameters (metrics included) and the
    out-of-fold probability of each training lead, in the order given."""
    fit = fit_tenant(LeadScoringModel.from_params(prior_params), version, leads, np.asarray(labels), seed)
    return {
        "params": fit.model.to_params(),
        "out_of_fold": None if fit.out_of_fold is None else [float(p) for p in fit.out_of_fold],
    }
