"""Lead scoring, evaluated honestly: reported, never tuned on.

1. The shared priors (`logreg-v1`, `logreg-v2`) on the synthetic funnel they are
   trained on, whose ground truth is neither model's feature map
   (`chains.scoring.synthetic`): 5-fold cross-validated ROC AUC, Brier score and a
   10-bin reliability table of the out-of-fold probabilities, next to the AUC of the
   ground truth itself (the ceiling no model of these features reaches).
2. A tenant's own model, learning from outcomes: a tenant whose funnel differs from
   the prior's (`TENANT_FUNNEL`: other industries and sources convert) records 50, 200
   or 1,000 outcomes; its model (`fit_tenant`, started from logreg-v2) is scored on
   5,000 held-out leads of that tenant, against the prior and against a model trained
   on the same outcomes from scratch. Mean over 5 draws of the outcomes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

from chains.scoring.calibration import ReliabilityBin, brier_score, expected_calibration_error, reliability_table
from chains.scoring.priors import TRAINING_SIZE, VERSIONS, train_models
from chains.scoring.synthetic import TENANT_FUNNEL, generate_leads
from chains.scoring.training import fit_prior, fit_tenant

LEARNING_SIZES = (50, 200, 1_000)
DRAWS = 5
HELD_OUT = 5_000


@dataclass(frozen=True, slots=True)
class PriorReport:
    version: str
    cv_auc: float
    brier: float
    calibration_error: float
    reliability: list[ReliabilityBin]
    oracle_auc: float


@dataclass(frozen=True, slots=True)
class LearningPoint:
    outcomes: int
    tenant_auc: float
    tenant_auc_sd: float
    tenant_brier: float
    scratch_auc: float
    prior_auc: float
    prior_brier: float


def prior_reports(seed: int = 7) -> list[PriorReport]:
    """Exactly the served priors' training (same data and seed), with its out-of-fold predictions."""
    data = generate_leads(TRAINING_SIZE, seed=seed)
    oracle = float(roc_auc_score(data.converted, data.true_probability))
    reports = []
    for version, spec in VERSIONS.items():
        oof = fit_prior(version, spec.features, spec.penalty, data.leads, data.converted, seed).out_of_fold
        assert oof is not None
        table = reliability_table(data.converted, oof)
        reports.append(PriorReport(version, float(roc_auc_score(data.converted, oof)), brier_score(data.converted, oof),
                                   expected_calibration_error(table), table, oracle))
    return reports


def learning_curve(seed: int = 1_000) -> list[LearningPoint]:
    prior = train_models()["logreg-v2"]
    spec = VERSIONS["logreg-v2"]
    held_out = generate_leads(HELD_OUT, seed=seed, funnel=TENANT_FUNNEL)
    prior_p = prior.predict_proba(held_out.leads)
    prior_auc = float(roc_auc_score(held_out.converted, prior_p))
    points = []
    for size in LEARNING_SIZES:
        tenant_aucs, tenant_briers, scratch_aucs = [], [], []
        for draw in range(DRAWS):
            outcomes = generate_leads(size, seed=seed + 1 + draw * 10 + size, funnel=TENANT_FUNNEL)
            tenant = fit_tenant(prior, "tenant", outcomes.leads, outcomes.converted, seed=draw).model
            p = tenant.predict_proba(held_out.leads)
            tenant_aucs.append(roc_auc_score(held_out.converted, p))
            tenant_briers.append(brier_score(held_out.converted, p))
            scratch = fit_prior("scratch", spec.features, spec.penalty, outcomes.leads, outcomes.converted, draw).model
            scratch_aucs.append(roc_auc_score(held_out.converted, scratch.predict_proba(held_out.leads)))
        points.append(LearningPoint(size, float(np.mean(tenant_aucs)), float(np.std(tenant_aucs)),
                                    float(np.mean(tenant_briers)), float(np.mean(scratch_aucs)), prior_auc,
                                    brier_score(held_out.converted, prior_p)))
    return points


def print_scoring_report(priors: list[PriorReport], curve: list[LearningPoint]) -> None:
    print(f"\nlead scoring — shared priors, 5-fold CV on {TRAINING_SIZE:,} synthetic leads "
          f"(ground truth AUC {priors[0].oracle_auc:.3f}: the ceiling)")
    for report in priors:
        print(f"  {report.version}: CV AUC {report.cv_auc:.3f}, Brier {report.brier:.4f}, "
              f"calibration error {report.calibration_error:.3f}")
        print(f"    {'bin':<11} {'leads':>6} {'predicted':>9} {'observed':>8}")
        for b in report.reliability:
            print(f"    {b.lower:.1f}–{b.upper:.1f}    {b.count:>6} {b.mean_predicted:>9.3f} {b.observed_rate:>8.3f}")
    print(f"\nlead scoring — a tenant's own model on {HELD_OUT:,} held-out leads of a tenant whose funnel differs "
          f"(mean of {DRAWS} draws)")
    print(f"  {'outcomes':>8}  {'tenant AUC':>10}  {'± sd':>5}  {'Brier':>6}  {'from scratch':>12}  "
          f"{'prior AUC':>9}  {'prior Brier':>11}")
    for p in curve:
        print(f"  {p.outcomes:>8}  {p.tenant_auc:>10.3f}  {p.tenant_auc_sd:>5.3f}  {p.tenant_brier:>6.4f}  "
              f"{p.scratch_auc:>12.3f}  {p.prior_auc:>9.3f}  {p.prior_brier:>11.4f}")


def scoring_rows(priors: list[PriorReport], curve: list[LearningPoint]) -> list[tuple[str, float, str]]:
    rows = [(f"lead scoring CV AUC ({r.version})", r.cv_auc,
             f"5-fold CV, {TRAINING_SIZE:,} synthetic leads whose truth is neither model's features "
             f"(truth's own AUC {r.oracle_auc:.3f}); Brier {r.brier:.4f}; calibration error {r.calibration_error:.3f}")
            for r in priors]
    rows += [(f"tenant model AUC after {p.outcomes:,} outcomes", p.tenant_auc,
              f"{HELD_OUT:,} held-out leads of a tenant unlike the prior; shared prior {p.prior_auc:.3f}; "
              f"from scratch {p.scratch_auc:.3f}; mean of {DRAWS}")
             for p in curve]
    return rows
