"""Lead scoring: explanations add up to the score, versions differ, routing is per tenant."""

from __future__ import annotations

import math

import pytest

from chains.context import run_config
from chains.scoring.chain import ModelRouting, build_lead_scoring_chain, score_lead
from chains.scoring.model import VERSIONS, LeadScoringModel, train_models
from chains.scoring.synthetic import generate_leads


@pytest.fixture(scope="module")
def models() -> dict[str, LeadScoringModel]:
    return train_models()


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


def test_models_learn_the_funnel(models: dict[str, LeadScoringModel]) -> None:
    for model in models.values():
        assert model.holdout_auc is not None and model.holdout_auc > 0.75
    assert models["logreg-v2"].holdout_auc > models["logreg-v1"].holdout_auc  # type: ignore[operator]


def test_demo_request_raises_the_score(models: dict[str, LeadScoringModel]) -> None:
    base = {"lead_id": "x", "job_title": "Marketing Manager", "email_clicks_30d": 2}
    without = score_lead(models["logreg-v2"], {**base, "demo_requested": False})
    with_demo = score_lead(models["logreg-v2"], {**base, "demo_requested": True})
    assert with_demo["score"] > without["score"]
    top = with_demo["reasoning"][0]
    assert top["factor"] == "demo_requested" and top["weight"] > 0


def test_complete_profiles_are_more_confident(models: dict[str, LeadScoringModel]) -> None:
    full = generate_leads(1, seed=3).leads[0] | {k: v for k, v in generate_leads(1, seed=4).leads[0].items() if v is not None}
    sparse = {"lead_id": "y", "job_title": "CEO"}
    assert score_lead(models["logreg-v1"], full)["confidence"] > score_lead(models["logreg-v1"], sparse)["confidence"]


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
