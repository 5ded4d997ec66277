"""Lead scoring beside its LangServe chain: outcomes, a lead's scores, the models and their A/B test.

Everything is the caller's tenant's: a lead another tenant scored, or a model version
another tenant trained, is simply not found here (404), never "forbidden".

Route order matters: this router is included after the chain routes, so every
LangServe endpoint under `/api/v1/ai/scoring/leads/` (invoke, batch, stream...,
`input_schema`, `playground/...`, `c/{hash}/...`) matches first. The lead id path
segment also refuses LangServe's GET names (see `LeadIdConvertor`), so
`.../leads/playground` still gets LangServe's redirect to `.../leads/playground/`.
A lead whose id contains "/" or is one of those names can be scored and given an
outcome, but not read by this path.

Recording an outcome is on the tenant's audit trail (`lead_outcome_recorded`), like a
document change: it changes what the tenant's model will learn.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request, status
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.convertors import Convertor, register_url_convertor

from app.api.deps import CurrentPrincipal, ServicesDep
from app.core.errors import NotFound
from app.store.lead_outcomes import FeaturesFrom
from app.store.lead_scores import features_of
from chains.schemas import LeadInput, ReasoningFactor

router = APIRouter(prefix="/api/v1/ai/scoring", tags=["lead scoring"])

LANGSERVE_GET_NAMES = ("input_schema", "output_schema", "config_schema", "playground")


class LeadIdConvertor(Convertor[str]):
    """One path segment that is not the name of a LangServe GET endpoint."""

    regex = r"(?!(?:" + "|".join(LANGSERVE_GET_NAMES) + r")$)[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("lead_id", LeadIdConvertor())
LEAD_PATH = "/leads/{lead_id:lead_id}"
# What the scoring chain accepts as a lead id, minus control characters (PostgreSQL
# cannot store a NUL: refused here with a 422 rather than failing in the database).
LEAD_ID = r"^[^\x00-\x1f\x7f]+$"
LeadId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f/]+$")]


# -- outcomes -------------------------------------------------------------------------

class OutcomeLead(LeadInput):
    """The lead's profile as the scoring chain takes it; `lead_id` may be left out."""

    lead_id: str | None = Field(default=None, min_length=1, max_length=128)  # type: ignore[assignment]


class OutcomeIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    lead_id: str = Field(min_length=1, max_length=128, pattern=LEAD_ID)
    outcome: Literal["won", "lost"]
    lead: OutcomeLead | None = Field(
        default=None,
        description="The scoring input to learn from; without it, the features stored when this lead was last scored.",
    )

    @model_validator(mode="after")
    def _same_lead(self) -> OutcomeIn:
        if self.lead is not None and self.lead.lead_id not in (None, self.lead_id):
            raise ValueError("lead.lead_id must be the same as lead_id (or left out)")
        return self


class OutcomeRecorded(BaseModel):
    lead_id: str
    outcome: str
    features_from: FeaturesFrom
    recorded_at: datetime


@router.post("/outcomes", status_code=status.HTTP_201_CREATED)
async def record_outcome(outcome_in: OutcomeIn, principal: CurrentPrincipal, services: ServicesDep) -> OutcomeRecorded:
    """Records that a lead was won or lost. The tenant's own model learns from these
    (`GET /api/v1/ai/scoring/models`); training runs in the background, never in this request."""
    features_from: FeaturesFrom
    if outcome_in.lead is not None:
        features, features_from = features_of(outcome_in.lead.model_dump()), "request"
    else:
        last = await services.scores.latest(principal.tenant_id, outcome_in.lead_id)
        if last is None:
            raise NotFound(f"lead {outcome_in.lead_id!r} was never scored in your tenant: send its profile as `lead`")
        features, features_from = last.features, "last_score"
    recorded = await services.outcomes.record(
        tenant_id=principal.tenant_id, lead_id=outcome_in.lead_id, outcome=outcome_in.outcome, features=features,
        features_from=features_from, user_id=principal.user_id,
    )
    await services.audit.security_event(
        tenant_id=principal.tenant_id, user_id=principal.user_id, run_id=None, kind="lead_outcome_recorded",
        detail={"lead_id": recorded.lead_id, "outcome": recorded.outcome, "features_from": features_from},
    )
    services.trainer.outcome_recorded(principal.tenant_id)
    return OutcomeRecorded(lead_id=recorded.lead_id, outcome=recorded.outcome, features_from=features_from,
                           recorded_at=recorded.recorded_at)


# -- a lead's scores --------------------------------------------------------------------

class PastScore(BaseModel):
    score: int
    confidence: float
    model_version: str
    scored_at: datetime


class OutcomeRecord(BaseModel):
    outcome: str
    features_from: str
    recorded_by: str
    recorded_at: datetime


class LeadScoreRecord(BaseModel):
    lead_id: str
    score: int
    confidence: float
    model_version: str
    scored_at: datetime
    reasoning: list[ReasoningFactor]
    base_log_odds: float
    features: dict[str, Any] = Field(description="The scoring input the score was computed from.")
    history: list[PastScore] = Field(description="Earlier scores, newest first.")
    outcomes: list[OutcomeRecord] = Field(description="Outcomes recorded for this lead, newest first.")


@router.get(LEAD_PATH)
async def read_lead_score(
    lead_id: LeadId, request: Request, principal: CurrentPrincipal, services: ServicesDep
) -> LeadScoreRecord:
    """The lead's latest score with its reasoning, its earlier scores and its outcomes."""
    scores = await services.scores.history(principal.tenant_id, lead_id)
    if not scores:
        # Lead ids are the CRM's and may repeat across tenants: a signal, checked later.
        services.cross_tenant.notice_missing(request, principal, "lead", lead_id)
        raise NotFound(f"lead {lead_id!r} was never scored in your tenant")
    latest = scores[0]
    outcomes = await services.outcomes.for_lead(principal.tenant_id, lead_id)
    return LeadScoreRecord(
        lead_id=latest.lead_id, score=latest.score, confidence=latest.confidence, model_version=latest.model_version,
        scored_at=latest.scored_at, reasoning=[ReasoningFactor.model_validate(r) for r in latest.reasoning],
        base_log_odds=latest.base_log_odds, features=latest.features,
        history=[PastScore(score=s.score, confidence=s.confidence, model_version=s.model_version,
                           scored_at=s.scored_at) for s in scores[1:]],
        outcomes=[OutcomeRecord(outcome=o.outcome, features_from=o.features_from, recorded_by=o.recorded_by,
                                recorded_at=o.recorded_at) for o in outcomes],
    )


# -- models -----------------------------------------------------------------------------

class ModelMetrics(BaseModel):
    cv_auc: float | None = Field(description="Cross-validated ROC AUC on its training data (out-of-fold).")
    brier: float | None = Field(description="Brier score of the same out-of-fold probabilities (lower is better).")
    cv_folds: int | None
    won: int
    lost: int


class ModelVersionRecord(BaseModel):
    version: str
    kind: Literal["shared_prior", "tenant"]
    active: bool
    training_size: int
    training_data: str
    prior: str | None = Field(description="For a tenant version: the shared model it started from.")
    metrics: ModelMetrics
    created_at: datetime | None


class OutcomeTally(BaseModel):
    leads: int
    won: int
    lost: int
    min_for_own_model: int
    retrain_every: int


class ModelCatalog(BaseModel):
    active: str
    versions: list[ModelVersionRecord]
    outcomes: OutcomeTally


def _metrics(metrics: dict[str, Any]) -> ModelMetrics:
    return ModelMetrics(cv_auc=metrics.get("cv_auc"), brier=metrics.get("brier"), cv_folds=metrics.get("cv_folds"),
                        won=int(metrics.get("won", 0)), lost=int(metrics.get("lost", 0)))


@router.get("/models")
async def list_models(principal: CurrentPrincipal, services: ServicesDep) -> ModelCatalog:
    """The versions this tenant can be scored with, which one is active, and how far it
    is from its own model."""
    active, versions = await services.scoring.versions(principal.tenant_id)
    records = []
    for version in versions:
        if version.info is None:
            model = services.scoring.routing.models[version.name]
            records.append(ModelVersionRecord(
                version=version.name, kind="shared_prior", active=version.active,
                training_size=int(model.metrics["training_size"]), training_data=str(model.metrics["training_data"]),
                prior=None, metrics=_metrics(model.metrics),
                created_at=datetime.fromisoformat(model.metrics["trained_at"]),
            ))
        else:
            records.append(ModelVersionRecord(
                version=version.name, kind="tenant", active=version.active, training_size=version.info.training_size,
                training_data=f"{version.info.training_size:,} outcomes recorded by your tenant",
                prior=version.info.prior, metrics=_metrics(version.info.metrics), created_at=version.info.created_at,
            ))
    counts = await services.outcomes.counts(principal.tenant_id)
    settings = services.settings
    return ModelCatalog(active=active, versions=records, outcomes=OutcomeTally(
        leads=counts.leads, won=counts.won, lost=counts.lost, min_for_own_model=settings.scoring_min_outcomes,
        retrain_every=settings.scoring_retrain_every))


VersionName = Annotated[str, Field(min_length=1, max_length=64)]


class ModelTestIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    a: VersionName
    b: VersionName


class ModelTestSide(BaseModel):
    version: str
    kind: Literal["shared_prior", "tenant"]
    auc: float
    brier: float
    top_decile_conversion: float
    lift_top_decile: float = Field(description="Conversion rate of the 10% best-scored leads ÷ the base rate.")
    out_of_fold: int = Field(description="Outcomes scored with the version's out-of-fold probability.")
    predicted: int = Field(description="Outcomes the version never saw, scored with its plain prediction.")
    in_sample: int
    evaluation: str


class AucDifference(BaseModel):
    auc_difference: float = Field(description="AUC(b) − AUC(a).")
    standard_error: float
    ci95_low: float
    ci95_high: float
    p_value: float
    test: str


class TestedOutcomes(BaseModel):
    count: int
    won: int
    lost: int
    base_rate: float


class ModelTestResult(BaseModel):
    outcomes: TestedOutcomes
    a: ModelTestSide
    b: ModelTestSide
    difference: AucDifference


@router.post("/models/test")
async def compare_models(test_in: ModelTestIn, principal: CurrentPrincipal, services: ServicesDep) -> ModelTestResult:
    """Compares two versions on the tenant's recorded outcomes: AUC, Brier, top-decile
    lift, and DeLong's test of the AUC difference. Tenant versions are scored out of
    sample (out-of-fold for what they were trained on)."""
    result = await services.model_comparison.compare(principal.tenant_id, test_in.a, test_in.b)
    return ModelTestResult.model_validate(result)
