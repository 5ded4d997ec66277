"""The shared prior models every tenant is scored with until its own model takes over.

Both are trained on the same synthetic funnel (`chains.scoring.synthetic`, whose
ground truth is neither model's feature map) at first use, deterministically for a
seed, so one training serves every app in the process and every replica agrees.
Their metrics are 5-fold cross-validated on that training data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

from chains.scoring.model import LeadScoringModel
from chains.scoring.synthetic import generate_leads
from chains.scoring.training import fit_prior

TRAINING_SIZE = 6_000


@dataclass(frozen=True, slots=True)
class PriorSpec:
    features: str  # a key of chains.scoring.features.FEATURE_MAPS
    penalty: float  # 1/C of scikit-learn's logistic regression


VERSIONS: dict[str, PriorSpec] = {
    "logreg-v1": PriorSpec("v1", 1.0),
    "logreg-v2": PriorSpec("v2", 2.0),
}


@lru_cache(maxsize=4)
def train_models(seed: int = 7) -> dict[str, LeadScoringModel]:
    """Every shared version, trained on `TRAINING_SIZE` synthetic leads of the prior funnel."""
    data = generate_leads(TRAINING_SIZE, seed=seed)
    trained_at = datetime.now(UTC).isoformat()
    models: dict[str, LeadScoringModel] = {}
    for version, spec in VERSIONS.items():
        model = fit_prior(version, spec.features, spec.penalty, data.leads, data.converted, seed).model
        model.metrics.update(trained_at=trained_at, training_data=f"{TRAINING_SIZE:,} synthetic leads (prior funnel)")
        models[version] = model
    return models
