"""Lead scoring: explanations add up to the score, confidence comes from the model, models
round-trip through JSON, a tenant model learns its own funnel, routing is per tenant."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from chains.context import run_config
from chains.scoring.calibration import brier_score, expected_calibration_error, reliability_table
from chains.scoring.chain import ModelRouting, build_lead_scoring_chain, score_lead
from chains.scoring.comparison import compare_versions, delong_test, top_decile_lift
from chains.scoring.model import LeadScoringModel
from chains.scoring.priors import VERSIONS, train_models
from chains.scoring.synthetic import PRIOR_FUNNEL, TENANT_FUNNEL, TITLES, generate_leads, ground_truth_log_odds
from chains.scoring.training import fit_prior, fit_tenant, train_tenant_model


@pytest.fixture(scope="module")
def models() -> dict[str, LeadScoringModel]:
    return train_models()


def complete_lead(seed: int) -> dict[str, object]:
    for lead in generate_leads(200, seed=seed).leads:
        if all(value is not None for value in lead.values()):
            return lead
    raise AssertionError("no complete lead generated")


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_reasoning_sums_to_the_score_for_many_leads(models: dict[str, LeadScoringModel], version: str) -> None:
    for lead in generate_leads(200, seed=99).leads:
        result = score_lead(models[version], lead)
        total = result["base_log_odds"] + sum(f["weight"] for f in result["reasoning"])
        assert abs(100 / (1 + math.exp(-total)) - result["score"]) <= 0.5 + 1e-4
        assert {f["factor"] for f in result["reasoning"]} == set(models[version].columns)
        for factor in result["reasoning"]:
            if lead.get(factor["factor"]) is None:
                assert factor["weight"] == 0 and "not provided" in factor["explanation"]


def test_models_learn_the_funnel_and_say_so_honestly(models: dict[str, LeadScoringModel]) -> None:
    """Cross-validated on their training data; better than the base rate, short of the truth."""
    data = generate_leads(6_000, seed=7)
    base_rate_brier = data.converted.mean() * (1 - data.converted.mean())
    oracle = roc_auc_score(data.converted, data.true_probability)
    for model in models.values():
        metrics = model.metrics
        assert metrics["cv_folds"] == 5 and metrics["training_size"] == 6_000
        assert 0.75 < metrics["cv_auc"] < oracle, "neither feature map is the ground truth"
        assert metrics["brier"] < base_rate_brier - 0.02


def test_the_ground_truth_is_neither_models_feature_map() -> None:
    """Pricing views matter only for decision makers; additive models give everyone the same effect."""
    def truth(pricing: int, title: str) -> float:
        seniority = dict(TITLES)[title]
        fields = dict(size=np.array([200]), industry=np.array(["software"]), seniority=np.array([seniority]),
                      source=np.array(["organic"]), budget=np.array([20_000.0]), opens=np.array([5]),
                      clicks=np.array([1]), visits=np.array([4]), pricing=np.array([pricing]),
                      demo=np.array([False]), recency=np.array([10]), meetings=np.array([0]))
        return float(ground_truth_log_odds(PRIOR_FUNNEL, **fields)[0])

    for_ceo = truth(3, "CEO") - truth(0, "CEO")
    for_intern = truth(3, "Intern") - truth(0, "Intern")
    assert for_ceo > for_intern + 0.5
    model = train_models()["logreg-v2"]

    def modelled(pricing: int, title: str) -> float:
        lead = {"lead_id": "x", "job_title": title, "pricing_page_views_30d": pricing}
        return sum(c.log_odds for c in model.explain(lead).contributions)

    assert modelled(3, "CEO") - modelled(0, "CEO") == pytest.approx(modelled(3, "Intern") - modelled(0, "Intern"))


def test_demo_request_raises_the_score(models: dict[str, LeadScoringModel]) -> None:
    base = {"lead_id": "x", "job_title": "Marketing Manager", "email_clicks_30d": 2}
    without = score_lead(models["logreg-v2"], {**base, "demo_requested": False})
    with_demo = score_lead(models["logreg-v2"], {**base, "demo_requested": True})
    assert with_demo["score"] > without["score"]
    top = with_demo["reasoning"][0]
    assert top["factor"] == "demo_requested" and top["weight"] > 0


def test_complete_profiles_are_more_confident(models: dict[str, LeadScoringModel]) -> None:
    sparse = {"lead_id": "y", "job_title": "CEO"}
    for version in VERSIONS:
        assert score_lead(models[version], complete_lead(3))["confidence"] > score_lead(models[version], sparse)["confidence"]


def test_confidence_is_the_width_of_the_models_interval_and_narrows_with_data() -> None:
    """confidence = 1 − (p95 − p5) over bootstrap refits: a model fitted on 300 leads is
    less sure of the same complete lead than one fitted on 6,000."""
    data = generate_leads(6_000, seed=21)
    small = fit_prior("small", "v2", 2.0, data.leads[:300], data.converted[:300]).model
    large = fit_prior("large", "v2", 2.0, data.leads, data.converted).model
    leads = [lead for lead in generate_leads(400, seed=22).leads if all(v is not None for v in lead.values())][:20]
    for model in (small, large):
        for lead in leads:
            explanation = model.explain(lead)
            low, high = explanation.interval
            assert 0 <= low <= high <= 1
            assert score_lead(model, lead)["confidence"] == pytest.approx(1 - (high - low), abs=1e-3)
    widths = {model.version: np.mean([np.subtract(*model.explain(lead).interval[::-1]) for lead in leads])
              for model in (small, large)}
    assert widths["small"] > 1.5 * widths["large"]


def test_a_model_round_trips_through_json(models: dict[str, LeadScoringModel]) -> None:
    for model in models.values():
        restored = LeadScoringModel.from_params(json.loads(json.dumps(model.to_params())))
        for lead in generate_leads(50, seed=5).leads:
            assert score_lead(restored, lead) == score_lead(model, lead)
    broken = models["logreg-v2"].to_params() | {"weights": [1.0, 2.0]}
    with pytest.raises(ValueError, match="shape"):
        LeadScoringModel.from_params(broken)
    with pytest.raises(ValueError, match="feature map"):
        LeadScoringModel.from_params(models["logreg-v2"].to_params() | {"features": "v9"})


def test_a_tenant_model_learns_a_funnel_unlike_the_priors(models: dict[str, LeadScoringModel]) -> None:
    prior = models["logreg-v2"]
    held_out = generate_leads(4_000, seed=31, funnel=TENANT_FUNNEL)
    outcomes = generate_leads(1_000, seed=32, funnel=TENANT_FUNNEL)
    fit = fit_tenant(prior, "tenant-v1", outcomes.leads, outcomes.converted, seed=1)
    prior_auc = roc_auc_score(held_out.converted, prior.predict_proba(held_out.leads))
    tenant_auc = roc_auc_score(held_out.converted, fit.model.predict_proba(held_out.leads))
    assert tenant_auc > prior_auc + 0.02
    assert fit.model.features == prior.features and fit.model.metrics["prior"] == "logreg-v2"
    assert fit.out_of_fold is not None and len(fit.out_of_fold) == 1_000
    assert fit.model.metrics["cv_auc"] == pytest.approx(roc_auc_score(outcomes.converted, fit.out_of_fold))
    healthcare = fit.model.weights[fit.model.columns["industry"]][2]
    assert healthcare > prior.weights[prior.columns["industry"]][2], "healthcare converts for this tenant"


def test_the_training_job_takes_and_returns_plain_data(models: dict[str, LeadScoringModel]) -> None:
    outcomes = generate_leads(120, seed=41, funnel=TENANT_FUNNEL)
    result = train_tenant_model(models["logreg-v2"].to_params(), "tenant-v3", outcomes.leads,
                                [int(y) for y in outcomes.converted], 3)
    json.dumps(result)  # what crosses the process boundary and goes into the database
    model = LeadScoringModel.from_params(result["params"])
    assert model.version == "tenant-v3" and model.bootstrap.shape == (30, len(model.weights) + 1)
    assert len(result["out_of_fold"]) == 120
    with pytest.raises(ValueError, match="both won and lost"):
        fit_tenant(models["logreg-v2"], "t", outcomes.leads[:5], np.zeros(5))


def test_calibration_and_comparison_metrics() -> None:
    rng = np.random.default_rng(0)
    truth = rng.random(4_000)
    y = (rng.random(4_000) < truth).astype(int)
    table = reliability_table(y, truth)
    assert sum(b.count for b in table) == 4_000 and len(table) == 10
    assert expected_calibration_error(table) < 0.03, "the true probabilities are calibrated"
    assert brier_score(y, truth) < brier_score(y, np.clip(truth * 1.6, 0, 1))
    noisy = np.clip(truth + rng.normal(0, 0.3, 4_000), 0, 1)
    test = delong_test(y, noisy, truth)
    assert test["auc_difference"] == pytest.approx(roc_auc_score(y, truth) - roc_auc_score(y, noisy))
    assert test["auc_difference"] > 0 and test["p_value"] < 1e-6
    assert delong_test(y, truth, truth)["p_value"] == 1.0
    rate, lift = top_decile_lift(y, truth)
    assert rate == pytest.approx(y[np.argsort(-truth)[:400]].mean()) and lift > 1.5


def test_a_comparison_uses_out_of_fold_probabilities_where_given(models: dict[str, LeadScoringModel]) -> None:
    data = generate_leads(200, seed=51)
    params = models["logreg-v2"].to_params()
    perfect: list[float | None] = [float(y) for y in data.converted]
    result = compare_versions(params, params, data.leads, list(data.converted), None, perfect)
    assert result["b"]["auc"] == 1.0 and result["b"]["out_of_fold"] == 200 and result["a"]["predicted"] == 200
    assert result["difference"]["auc_difference"] == pytest.approx(1.0 - result["a"]["auc"])


async def test_ab_routing_by_tenant(models: dict[str, LeadScoringModel]) -> None:
    chain = build_lead_scoring_chain(ModelRouting(models, "logreg-v2", {"acme": "logreg-v1"}))
    lead = {"lead_id": "l", "demo_requested": True}
    assert (await chain.ainvoke(lead, run_config("acme", "u")))["model_version"] == "logreg-v1"
    assert (await chain.ainvoke(lead, run_config("globex", "u")))["model_version"] == "logreg-v2"


def test_unknown_version_is_refused_at_start(models: dict[str, LeadScoringModel]) -> None:
    with pytest.raises(ValueError, match="unknown scoring model"):
        ModelRouting(models, "logreg-v2", {"acme": "xgboost-v9"})


async def test_chain_without_identity_fails_closed(models: dict[str, LeadScoringModel]) -> None:
    from chains.context import MissingIdentity

    chain = build_lead_scoring_chain(ModelRouting(models, "logreg-v2", {}))
    with pytest.raises(MissingIdentity):
        await chain.ainvoke({"lead_id": "l"})
