"""When a tenant's own scoring model is (re)trained, and the training itself, off the request.

Recording an outcome only pokes the trainer (`outcome_recorded`, which returns at
once); a background task per tenant then checks, from the database so every replica
agrees, whether a model is due:

- the first, once the tenant has `SCORING_MIN_OUTCOMES` leads with an outcome (200 by
  default, the contract's number) and both kinds (won and lost) are among them;
- then again after every `SCORING_RETRAIN_EVERY` new leads with an outcome (100).

Training is CPU work (a few hundred milliseconds to a couple of seconds): it runs in
the service's worker processes (`CpuRunner`, accounted to the tenant like its other CPU
work), never on the event loop. The new version is stored, serves on this replica at
once and on the others within `SCORING_MODEL_CHECK_S`, and goes on the tenant's audit
trail (`scoring_model_trained`). Pokes that arrive while a tenant trains coalesce into
one more check afterwards. If the process dies mid-training, the tenant's next outcome
(on any replica) finds the model still due and trains it.
"""

from __future__ import annotations

import logging

from app.core.scoring_models import TenantScoringModels
from app.store.coalesced_runs import CoalescedRuns
from app.store.audit import AuditLog
from app.store.lead_outcomes import OutcomeCounts, OutcomeLog
from app.store.scoring_models import ModelHead, ModelRegistry, StoredModelInfo, version_name
from chains.ports import CpuRunner
from chains.scoring.model import LeadScoringModel
from chains.scoring.training import train_tenant_model

log = logging.getLogger(__name__)
TRAINER_USER = "scoring-trainer"  # the audit trail's user for models nobody trained by hand


class TenantModelTrainer:
    def __init__(
        self, *, outcomes: OutcomeLog, registry: ModelRegistry, models: TenantScoringModels, cpu: CpuRunner,
        audit: AuditLog, min_outcomes: int, retrain_every: int, max_outcomes: int,
    ) -> None:
        self.outcomes = outcomes
        self.registry = registry
        self.models = models
        self.cpu = cpu
        self.audit = audit
        self.min_outcomes = min_outcomes
        self.retrain_every = retrain_every
        self.max_outcomes = max_outcomes
        self._checks = CoalescedRuns(self.train_if_due, name="scoring model training")

    def due(self, counts: OutcomeCounts, newest: ModelHead | None) -> bool:
        if counts.leads < self.min_outcomes or counts.won == 0 or counts.lost == 0:
            return False
        return newest is None or counts.leads - newest.outcomes_total >= self.retrain_every

    def outcome_recorded(self, tenant_id: str) -> None:
        """Schedules a check of the tenant; returns at once."""
        self._checks.request(tenant_id)

    async def train_if_due(self, tenant_id: str) -> StoredModelInfo | None:
        counts = await self.outcomes.counts(tenant_id)
        newest = await self.registry.newest(tenant_id)
        if not self.due(counts, newest):
            return None
        labelled = await self.outcomes.labelled_leads(tenant_id, limit=self.max_outcomes)
        labels = [int(lead.won) for lead in labelled]
        if len(set(labels)) < 2:
            return None
        number = (newest.number if newest else 0) + 1
        prior = self.models.prior_for(tenant_id)
        trained = await self.cpu.run(
            tenant_id, train_tenant_model, prior.to_params(), version_name(number),
            [lead.features for lead in labelled], labels, number,
        )
        out_of_fold = trained["out_of_fold"] or [None] * len(labelled)
        stored = await self.registry.add(
            tenant_id=tenant_id, number=number, prior=prior.version, params=trained["params"],
            out_of_fold={lead.lead_id: p for lead, p in zip(labelled, out_of_fold, strict=True)},
            learned_from={lead.lead_id: lead.outcome_id for lead in labelled},
            training_size=len(labelled), outcomes_total=counts.leads, metrics=trained["params"]["metrics"],
        )
        if stored is None:
            return None  # another replica stored this version first, or the tenant was erased
        self.models.activate(tenant_id, number, LeadScoringModel.from_params(trained["params"]))
        metrics = stored.metrics
        await self.audit.security_event(
            tenant_id=tenant_id, user_id=TRAINER_USER, run_id=None, kind="scoring_model_trained",
            detail={"version": stored.name, "prior": prior.version, "training_size": stored.training_size,
                    "cv_auc": metrics.get("cv_auc"), "brier": metrics.get("brier")},
        )
        log.info("tenant %s: scoring model %s trained on %d outcomes", tenant_id, stored.name, stored.training_size)
        return stored

    async def idle(self) -> None:
        """Waits for every check under way (and those they schedule) to finish."""
        await self._checks.idle()

    async def close(self) -> None:
        await self._checks.close()
