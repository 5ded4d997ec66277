"""The lead-scoring chain: a score 0-100, its confidence and the model's own reasons.

Which model scores a lead is asked of a `ScoringModels` source for the run's tenant
(the app's source answers with the tenant's own model once it has one, else the shared
prior `ModelRouting` picks); the chain itself only does the arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda

from chains.context import run_context
from chains.scoring.model import Explanation, FactorContribution, LeadScoringModel
from chains.schemas import LeadInput, LeadScore

_LABELS = {
    "company_size": "company size",
    "industry": "industry fit",
    "job_title": "contact seniority",
    "source": "lead source",
    "budget_usd": "budget",
    "email_opens_30d": "email opens (30 days)",
    "email_clicks_30d": "email clicks (30 days)",
    "website_visits_30d": "website visits (30 days)",
    "pricing_page_views_30d": "pricing page views (30 days)",
    "demo_requested": "demo requested",
    "days_since_last_activity": "days since last activity",
    "meetings_held": "meetings held",
}


def explain_factor(contribution: FactorContribution) -> str:
    label = _LABELS[contribution.factor]
    if not contribution.provided:
        return f"{label}: not provided, counted as an average lead"
    odds = math.exp(contribution.log_odds)
    direction = "raises" if contribution.log_odds >= 0 else "lowers"
    return f"{label} = {contribution.value} {direction} the odds of converting ×{odds:.2f} vs. an average lead"


def confidence_of(explanation: Explanation) -> float:
    """1 − the width of the model's 90% interval of this lead's probability, clipped to
    0..1 (`LeadScoringModel.interval`: bootstrap refits × what missing factors could
    be). Narrow when the model was trained on plenty of data and the profile is
    complete; wide for a sparse profile or a model trained on few outcomes."""
    low, high = explanation.interval
    return round(min(1.0, max(0.0, 1.0 - (high - low))), 3)


def score_lead(model: LeadScoringModel, lead: dict[str, Any]) -> dict[str, Any]:
    explanation = model.explain(lead)
    ranked = sorted(explanation.contributions, key=lambda c: abs(c.log_odds), reverse=True)
    return LeadScore(
        lead_id=lead["lead_id"],
        score=round(100 * explanation.probability),
        confidence=confidence_of(explanation),
        reasoning=[
            {
                "factor": c.factor,
                "weight": round(c.log_odds, 6),
                "value": c.value,
                "explanation": explain_factor(c),
            }
            for c in ranked
        ],
        base_log_odds=round(explanation.base_log_odds, 6),
        model_version=model.version,
    ).model_dump()


class ScoringModels(Protocol):
    """Which fitted model scores a tenant's leads now."""

    async def for_tenant(self, tenant_id: str) -> LeadScoringModel: ...


class ModelRouting:
    """Which shared prior a tenant gets: A/B routing by configuration."""

    def __init__(
        self,
        models: Mapping[str, LeadScoringModel],
        default_version: str,
        tenant_versions: Mapping[str, str],
    ) -> None:
        unknown = {default_version, *tenant_versions.values()} - set(models)
        if unknown:
            raise ValueError(f"unknown scoring model version(s): {sorted(unknown)}")
        self.models = models
        self.default_version = default_version
        self.tenant_versions = dict(tenant_versions)

    def prior_for(self, tenant_id: str) -> LeadScoringModel:
        return self.models[self.tenant_versions.get(tenant_id, self.default_version)]

    async def for_tenant(self, tenant_id: str) -> LeadScoringModel:
        return self.prior_for(tenant_id)


def build_lead_scoring_chain(models: ScoringModels) -> Runnable[Any, Any]:
    async def ascore(payload: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        identity = run_context(config).identity
        # Microseconds of numpy once the model is in hand: no executor hop needed.
        return score_lead(await models.for_tenant(identity.tenant_id), payload)

    return RunnableLambda(ascore, name="lead_scoring").with_types(input_type=LeadInput, output_type=LeadScore)
