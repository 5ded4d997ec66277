"""A/B test of two scoring model versions on the outcomes a tenant recorded.

Both versions score the tenant's leads with an outcome (each lead's latest); the
metrics and DeLong's test are `chains.scoring.comparison`'s. Honesty about what each
model saw: a shared prior never saw this tenant's outcomes, so its predictions are
out-of-sample as they are. A tenant version was trained on some of them; for those it
contributes its out-of-fold probability (computed at training, from a fit that left
that lead out), and for the outcomes recorded after its training its plain prediction.
The answer says how many of each, and `in_sample` counts the rare leads it was trained
on without an out-of-fold prediction (a class had fewer than 2 outcomes then).
"""

from __future__ import annotations

from typing import Any

from app.core.errors import Unprocessable
from app.core.scoring_models import ModelVersion, TenantScoringModels
from app.store.lead_outcomes import OutcomeLog
from chains.ports import CpuRunner
from chains.scoring.comparison import compare_versions

MIN_PER_KIND = 5


def _known(version: ModelVersion, lead_ids: list[str]) -> tuple[list[float | None] | None, int]:
    """Per lead, the probability to use instead of the model's (out-of-fold), and how
    many leads it was trained on without one."""
    if version.out_of_fold is None:
        return None, 0
    oof = version.out_of_fold
    return [oof.get(lead_id) for lead_id in lead_ids], sum(1 for i in lead_ids if i in oof and oof[i] is None)


def _how(version: ModelVersion, result: dict[str, Any], in_sample: int) -> str:
    if version.kind == "shared_prior":
        return "shared prior: never trained on this tenant's outcomes; plain predictions"
    return (f"tenant model: out-of-fold predictions for the {result['out_of_fold']} outcomes it was trained on, "
            f"plain predictions for the {result['predicted'] - in_sample} recorded after its training"
            + (f"; {in_sample} in-sample (trained on without a fold)" if in_sample else ""))


class ModelComparison:
    def __init__(self, *, models: TenantScoringModels, outcomes: OutcomeLog, cpu: CpuRunner,
                 min_outcomes: int, max_outcomes: int) -> None:
        self.models = models
        self.outcomes = outcomes
        self.cpu = cpu
        self.min_outcomes = min_outcomes
        self.max_outcomes = max_outcomes

    async def compare(self, tenant_id: str, a: str, b: str) -> dict[str, Any]:
        if a == b:
            raise Unprocessable("a and b must name two different versions", loc=("body", "b"))
        first, second = await self.models.resolve(tenant_id, a), await self.models.resolve(tenant_id, b)
        labelled = await self.outcomes.labelled_leads(tenant_id, limit=self.max_outcomes)
        won = sum(lead.won for lead in labelled)
        lost = len(labelled) - won
        if len(labelled) < self.min_outcomes or min(won, lost) < MIN_PER_KIND:
            raise Unprocessable(
                f"too few outcomes to compare models: {len(labelled)} recorded ({won} won, {lost} lost); "
                f"a comparison needs at least {self.min_outcomes} with at least {MIN_PER_KIND} of each kind"
            )
        lead_ids = [lead.lead_id for lead in labelled]
        known_a, in_sample_a = _known(first, lead_ids)
        known_b, in_sample_b = _known(second, lead_ids)
        result = await self.cpu.run(
            tenant_id, compare_versions, first.params, second.params, [lead.features for lead in labelled],
            [int(lead.won) for lead in labelled], known_a, known_b,
        )
        for key, version, in_sample in (("a", first, in_sample_a), ("b", second, in_sample_b)):
            result[key] |= {"version": version.name, "kind": version.kind, "in_sample": in_sample,
                            "predicted": result[key]["predicted"] - in_sample,
                            "evaluation": _how(version, result[key], in_sample)}
        result["outcomes"] = {"count": len(labelled), "won": won, "lost": lost, "base_rate": won / len(labelled)}
        result["difference"]["test"] = "DeLong, paired, two-sided: AUC(b) - AUC(a)"
        return result
