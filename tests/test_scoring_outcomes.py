"""Lead scoring that learns from outcomes, through the real app over HTTP, on SQLite and PostgreSQL.

Two replicas share one database, as in production: what one stores (scores, outcomes,
a tenant's model) the other serves. Tenants are fresh per test (the PostgreSQL
database is shared by the module).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import psycopg
import pytest

from app.api.chains import LEAD_SCORING_PATH
from app.core.auth import TokenVerifier
from app.core.config import Settings
from app.core.scoring_models import TenantScoringModels
from app.core.scoring_training import TenantModelTrainer
from app.server import create_app
from app.store.audit import AuditLog
from app.store.customer_records import MODEL_PREDICTIONS, CustomerRecords
from app.store.database import create_engine, database_url as to_async_url, migrate
from app.store.lead_outcomes import OutcomeLog
from app.store.scoring_models import ModelRegistry
from chains.scoring.chain import ModelRouting
from chains.scoring.priors import train_models
from chains.scoring.synthetic import TENANT_FUNNEL, generate_leads
from tests.conftest import make_settings
from tests.support.live_server import live_server
from tests.support.payloads import LEAD
from tests.support.servers import postgres_server
from tests.support.stores import keyring_for

OUTCOMES = "/api/v1/ai/scoring/outcomes"
MODELS = "/api/v1/ai/scoring/models"
MODEL_TEST = "/api/v1/ai/scoring/models/test"
MIN_OUTCOMES = 200  # the documented default, not lowered for the tests
RETRAIN_EVERY = 50
CHECK_S = 0.5
TAKEOVER_DEADLINE_S = 60.0


@dataclass
class Replicas:
    settings: Settings
    a: str
    b: str

    def headers(self, tenant: str, roles: tuple[str, ...] = ("rep",), user: str = "rita") -> dict[str, str]:
        token = TokenVerifier(self.settings).mint(tenant_id=tenant, user_id=user, roles=roles)
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, database_url: str | None) -> Iterator[Replicas]:
    """Two service processes' worth of app on one database (and, for SQLite, one file)."""
    settings = make_settings(
        tmp_path_factory.mktemp("scoring"), database_url=database_url, scoring_retrain_every=RETRAIN_EVERY,
        scoring_model_check_s=CHECK_S, scoring_tenant_models="ab-tenant=logreg-v1",
    )
    assert settings.scoring_min_outcomes == MIN_OUTCOMES
    with live_server(create_app(settings)) as a, live_server(create_app(settings)) as b:
        yield Replicas(settings, a, b)


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def score(http: httpx.Client, headers: dict[str, str], lead: dict[str, Any]) -> dict[str, Any]:
    response = http.post(f"{LEAD_SCORING_PATH}/invoke", headers=headers, json={"input": lead})
    assert response.status_code == 200, response.text
    return response.json()["output"]  # type: ignore[no-any-return]


def record(http: httpx.Client, headers: dict[str, str], lead_id: str, won: bool,
           lead: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"lead_id": lead_id, "outcome": "won" if won else "lost"}
    if lead is not None:
        body["lead"] = lead
    response = http.post(OUTCOMES, headers=headers, json=body)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def poll(read: Callable[[], Any], done: Callable[[Any], bool], timeout_s: float = TAKEOVER_DEADLINE_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"still {value!r} after {timeout_s} s"
        time.sleep(0.1)


def security_events(http: httpx.Client, replicas: Replicas, tenant: str) -> list[dict[str, Any]]:
    response = http.get("/api/v1/ai/security/events", headers=replicas.headers(tenant, ("admin",), "ada"))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


# -- POST /outcomes ---------------------------------------------------------------------

def test_outcomes_are_learned_from_the_request_or_from_the_last_score(replicas: Replicas, tenant: str) -> None:
    rep, stranger = replicas.headers(tenant), replicas.headers(f"{tenant}-other")
    with httpx.Client(base_url=replicas.a, timeout=30) as http:
        score(http, rep, {**LEAD, "lead_id": "L1"})
        from_score = record(http, rep, "L1", won=True)
        assert from_score["features_from"] == "last_score" and from_score["outcome"] == "won"
        profile = {k: v for k, v in LEAD.items() if k != "lead_id"}
        from_request = record(http, rep, "L2", won=False, lead=profile)
        assert from_request["features_from"] == "request"
        assert record(http, rep, "L3", won=True, lead={**profile, "lead_id": "L3"})["features_from"] == "request"

        # Without a profile, a lead this tenant never scored cannot be learned from.
        never = http.post(OUTCOMES, headers=rep, json={"lead_id": "L-never", "outcome": "won"})
        assert never.status_code == 404 and "never scored" in never.json()["detail"]
        # Another tenant's lead is simply unknown here, whatever that tenant did with it.
        foreign = http.post(OUTCOMES, headers=stranger, json={"lead_id": "L1", "outcome": "lost"})
        assert foreign.status_code == 404
        assert http.get(MODELS, headers=stranger).json()["outcomes"]["leads"] == 0
        assert http.get(MODELS, headers=rep).json()["outcomes"] == {
            "leads": 3, "won": 2, "lost": 1, "min_for_own_model": MIN_OUTCOMES, "retrain_every": RETRAIN_EVERY}

        for bad in (
            {"lead_id": "L1", "outcome": "maybe"},
            {"lead_id": "L1"},
            {"outcome": "won"},
            {"lead_id": "", "outcome": "won"},
            {"lead_id": "x" * 129, "outcome": "won"},
            {"lead_id": "bad\u0000id", "outcome": "won"},
            {"lead_id": "L1", "outcome": "won", "tenant_id": "someone-else"},
            {"lead_id": "L1", "outcome": "won", "lead": {"lead_id": "L9"}},
            {"lead_id": "L1", "outcome": "won", "lead": {"company_size": -5}},
            {"lead_id": "L1", "outcome": "won", "lead": "not an object"},
            [],
        ):
            response = http.post(OUTCOMES, headers=rep, json=bad)
            assert response.status_code == 422, (bad, response.text)
            assert isinstance(response.json()["detail"], list)
        assert http.post(OUTCOMES, headers={**rep, "Content-Type": "application/json"}, content=b"{nope").status_code == 422
        assert http.post(OUTCOMES, headers=replicas.headers(tenant, ("viewer",)),
                         json={"lead_id": "L1", "outcome": "won"}).status_code == 403
        assert http.get(MODELS, headers=rep).json()["outcomes"]["leads"] == 3, "refused input changed nothing"

        recorded = [(e["detail"]["lead_id"], e["detail"]["outcome"], e["detail"]["features_from"], e["user_id"])
                    for e in security_events(http, replicas, tenant) if e["kind"] == "lead_outcome_recorded"]
        assert recorded == [("L3", "won", "request", "rita"), ("L2", "lost", "request", "rita"),
                            ("L1", "won", "last_score", "rita")]


# -- GET /leads/{lead_id} ---------------------------------------------------------------

def test_a_lead_shows_its_latest_score_reasoning_history_and_outcomes(replicas: Replicas, tenant: str) -> None:
    rep, stranger = replicas.headers(tenant), replicas.headers(f"{tenant}-other")
    lead_id = "acme lead #7 ü"
    path = f"{LEAD_SCORING_PATH}/{quote(lead_id, safe='')}"
    with httpx.Client(base_url=replicas.a, timeout=30) as http:
        cold = score(http, rep, {"lead_id": lead_id, "job_title": "Intern", "source": "cold_outbound"})
        hot = score(http, rep, {**LEAD, "lead_id": lead_id})
        record(http, rep, lead_id, won=True)
        with httpx.Client(base_url=replicas.b, timeout=30) as other_replica:
            read = other_replica.get(path, headers=rep)  # stored in the database, not in A's memory
        assert read.status_code == 200, read.text
        body = read.json()
        assert (body["lead_id"], body["score"], body["confidence"], body["model_version"]) == (
            lead_id, hot["score"], hot["confidence"], "logreg-v2")
        assert body["reasoning"] == hot["reasoning"] and body["base_log_odds"] == hot["base_log_odds"]
        total = body["base_log_odds"] + sum(f["weight"] for f in body["reasoning"])
        assert abs(100 / (1 + np.exp(-total)) - body["score"]) <= 0.5 + 1e-4
        assert body["features"]["job_title"] == LEAD["job_title"] and body["features"]["industry"] is None
        assert [(h["score"], h["model_version"]) for h in body["history"]] == [(cold["score"], "logreg-v2")]
        assert body["history"][0]["scored_at"] < body["scored_at"]
        assert [(o["outcome"], o["features_from"], o["recorded_by"]) for o in body["outcomes"]] == [
            ("won", "last_score", "rita")]

        assert http.get(path, headers=stranger).status_code == 404, "another tenant's lead does not exist here"
        missing = http.get(f"{LEAD_SCORING_PATH}/never-scored", headers=rep)
        assert missing.status_code == 404 and "never scored" in missing.json()["detail"]
        assert http.get(f"{LEAD_SCORING_PATH}/{'x' * 129}", headers=rep).status_code == 422
        assert http.get(f"{LEAD_SCORING_PATH}/bad%00id", headers=rep).status_code == 422
        assert http.get(path, headers=replicas.headers(tenant, ("viewer",))).status_code == 403
        assert http.get(path).status_code == 401


def test_langserve_endpoints_under_the_leads_path_still_reach_langserve(replicas: Replicas, tenant: str) -> None:
    rep = replicas.headers(tenant)
    with httpx.Client(base_url=replicas.a, timeout=30) as http:
        schema = http.get(f"{LEAD_SCORING_PATH}/input_schema", headers=rep)
        assert schema.status_code == 200 and "lead_id" in schema.json()["properties"]
        assert "model_version" in http.get(f"{LEAD_SCORING_PATH}/output_schema", headers=rep).json()["properties"]
        assert http.get(f"{LEAD_SCORING_PATH}/config_schema", headers=rep).status_code == 200
        playground = http.get(f"{LEAD_SCORING_PATH}/playground/", headers=rep)
        assert playground.status_code == 200 and "<html" in playground.text.lower()
        redirect = http.get(f"{LEAD_SCORING_PATH}/playground", headers=rep)
        assert redirect.status_code == 307 and redirect.headers["location"].endswith("/playground/")
        # One score PostgreSQL cannot store (a NUL in its id) is served, and fails alone.
        batch = http.post(f"{LEAD_SCORING_PATH}/batch", headers=rep,
                          json={"inputs": [{"lead_id": "invoke"}, {"lead_id": "nul\u0000id"}, {"lead_id": "batch"}]})
        assert batch.status_code == 200 and len(batch.json()["output"]) == 3
        assert http.get(f"{LEAD_SCORING_PATH}/batch", headers=rep).json()["lead_id"] == "batch"
        # A GET of LangServe's POST-only names is a lead read: here, leads named so.
        invoke = http.get(f"{LEAD_SCORING_PATH}/invoke", headers=rep)
        assert invoke.status_code == 200 and invoke.json()["lead_id"] == "invoke"
        assert http.get(f"{LEAD_SCORING_PATH}/stream", headers=rep).status_code == 404


# -- GET /models --------------------------------------------------------------------------

def test_models_list_the_shared_priors_and_which_one_serves(replicas: Replicas, tenant: str) -> None:
    with httpx.Client(base_url=replicas.a, timeout=30) as http:
        catalog = http.get(MODELS, headers=replicas.headers(tenant)).json()
        assert catalog["active"] == "logreg-v2"
        assert [(v["version"], v["kind"], v["active"]) for v in catalog["versions"]] == [
            ("logreg-v1", "shared_prior", False), ("logreg-v2", "shared_prior", True)]
        for version in catalog["versions"]:
            assert version["training_size"] == 6_000 and version["created_at"]
            assert 0.7 < version["metrics"]["cv_auc"] < 0.95 and 0.05 < version["metrics"]["brier"] < 0.2
            assert version["metrics"]["cv_folds"] == 5
        assert catalog["outcomes"]["leads"] == 0
        routed = http.get(MODELS, headers=replicas.headers("ab-tenant", ("viewer",)))
        assert routed.status_code == 403, "viewers do not read models"
        assert http.get(MODELS, headers=replicas.headers("ab-tenant")).json()["active"] == "logreg-v1"
        assert http.get(MODELS).status_code == 401
        assert http.get(MODELS, headers={"Authorization": "Bearer not-a-token"}).status_code == 401


# -- POST /models/test ----------------------------------------------------------------------

def test_two_versions_are_compared_on_the_tenants_outcomes(replicas: Replicas, tenant: str) -> None:
    manager, rep = replicas.headers(tenant, ("manager",)), replicas.headers(tenant)
    data = generate_leads(60, seed=11, funnel=TENANT_FUNNEL)
    with httpx.Client(base_url=replicas.a, timeout=60) as http:
        few = http.post(MODEL_TEST, headers=manager, json={"a": "logreg-v1", "b": "logreg-v2"})
        assert few.status_code == 422 and "too few outcomes" in few.json()["detail"][0]["msg"]
        for lead, won in zip(data.leads, data.converted, strict=True):
            record(http, rep, lead["lead_id"], bool(won), lead)

        result = http.post(MODEL_TEST, headers=manager, json={"a": "logreg-v1", "b": "logreg-v2"})
        assert result.status_code == 200, result.text
        body = result.json()
        assert body["outcomes"] == {"count": 60, "won": int(data.converted.sum()), "lost": 60 - int(data.converted.sum()),
                                    "base_rate": pytest.approx(data.converted.mean())}
        for side, version in (("a", "logreg-v1"), ("b", "logreg-v2")):
            assert body[side]["version"] == version and body[side]["kind"] == "shared_prior"
            assert (body[side]["out_of_fold"], body[side]["predicted"], body[side]["in_sample"]) == (0, 60, 0)
            assert 0 <= body[side]["auc"] <= 1 and 0 <= body[side]["brier"] <= 1 and body[side]["lift_top_decile"] >= 0
        difference = body["difference"]
        assert difference["auc_difference"] == pytest.approx(body["b"]["auc"] - body["a"]["auc"])
        assert 0 <= difference["p_value"] <= 1 and difference["ci95_low"] <= difference["auc_difference"] <= difference["ci95_high"]
        assert "DeLong" in difference["test"]

        unknown = http.post(MODEL_TEST, headers=manager, json={"a": "logreg-v2", "b": "xgboost-v9"})
        assert unknown.status_code == 404 and "xgboost-v9" in unknown.json()["detail"]
        # A tenant version that exists only in another tenant is as unknown as that.
        stranger = replicas.headers(f"{tenant}-other", ("manager",))
        assert http.post(MODEL_TEST, headers=stranger, json={"a": "logreg-v2", "b": "tenant-v1"}).status_code == 404
        stranger_few = http.post(MODEL_TEST, headers=stranger, json={"a": "logreg-v1", "b": "logreg-v2"})
        assert stranger_few.status_code == 422, "another tenant's outcomes are not this tenant's"
        for bad in ({"a": "logreg-v2", "b": "logreg-v2"}, {"a": "logreg-v2"}, {"a": "", "b": "logreg-v1"},
                    {"a": "logreg-v1", "b": "logreg-v2", "c": "x"}, {"a": 1, "b": ["x"]}, {"a": "v" * 65, "b": "logreg-v1"}):
            response = http.post(MODEL_TEST, headers=manager, json=bad)
            assert response.status_code == 422, (bad, response.text)
            assert isinstance(response.json()["detail"], list)
        assert http.post(MODEL_TEST, headers=rep, json={"a": "logreg-v1", "b": "logreg-v2"}).status_code == 403


# -- the tenant's own model ------------------------------------------------------------------

def test_a_tenants_own_model_takes_over_at_the_minimum_on_every_replica(replicas: Replicas, tenant: str) -> None:
    rep, manager = replicas.headers(tenant), replicas.headers(tenant, ("manager",))
    other = replicas.headers(f"{tenant}-other")
    data = generate_leads(MIN_OUTCOMES + RETRAIN_EVERY, seed=5, funnel=TENANT_FUNNEL)
    assert 0 < data.converted[:MIN_OUTCOMES - 1].sum() < MIN_OUTCOMES - 1, "both kinds before the line"
    probe = {**LEAD, "lead_id": "probe"}
    with httpx.Client(base_url=replicas.a, timeout=60) as a, httpx.Client(base_url=replicas.b, timeout=60) as b:
        assert score(b, rep, probe)["model_version"] == "logreg-v2"  # B now caches "no model of its own"
        # Some outcomes from the features of the last score, the others with the profile.
        for index, (lead, won) in enumerate(zip(data.leads[:MIN_OUTCOMES - 1], data.converted, strict=False)):
            if index < 20:
                score(a, rep, lead)
                record(a, rep, lead["lead_id"], bool(won))
            else:
                record(a, rep, lead["lead_id"], bool(won), lead)
        catalog = a.get(MODELS, headers=rep).json()
        assert catalog["outcomes"]["leads"] == MIN_OUTCOMES - 1 and catalog["active"] == "logreg-v2"
        assert score(a, rep, probe)["model_version"] == "logreg-v2", "one outcome short of the line"

        record(a, rep, data.leads[MIN_OUTCOMES - 1]["lead_id"], bool(data.converted[MIN_OUTCOMES - 1]),
               data.leads[MIN_OUTCOMES - 1])
        crossed = time.monotonic()
        on_a = poll(lambda: score(a, rep, probe), lambda s: s["model_version"] != "logreg-v2")
        on_b = poll(lambda: score(b, rep, probe), lambda s: s["model_version"] != "logreg-v2")
        assert on_a["model_version"] == on_b["model_version"] == "tenant-v1"
        assert time.monotonic() - crossed < TAKEOVER_DEADLINE_S
        assert on_a["score"] == on_b["score"] and on_a["reasoning"] == on_b["reasoning"], "the same stored model"
        assert 0.0 <= on_a["confidence"] <= 1.0

        catalog = b.get(MODELS, headers=rep).json()
        own = catalog["versions"][-1]
        assert catalog["active"] == "tenant-v1"
        assert (own["version"], own["kind"], own["active"], own["training_size"], own["prior"]) == (
            "tenant-v1", "tenant", True, MIN_OUTCOMES, "logreg-v2")
        assert own["metrics"]["won"] + own["metrics"]["lost"] == MIN_OUTCOMES and own["metrics"]["cv_auc"] is not None
        # Each score keeps the version that made it.
        history = a.get(f"{LEAD_SCORING_PATH}/probe", headers=rep).json()
        versions = [history["model_version"], *(h["model_version"] for h in history["history"])]
        assert versions[0] == "tenant-v1" and "logreg-v2" in versions
        # Nobody else is scored by this tenant's model, nor sees it.
        assert score(a, other, probe)["model_version"] == "logreg-v2"
        assert [v["version"] for v in a.get(MODELS, headers=other).json()["versions"]] == ["logreg-v1", "logreg-v2"]
        trained = [e for e in security_events(a, replicas, tenant) if e["kind"] == "scoring_model_trained"]
        assert [(e["detail"]["version"], e["detail"]["training_size"]) for e in trained] == [("tenant-v1", MIN_OUTCOMES)]

        # Every RETRAIN_EVERY new outcomes, a new version.
        for lead, won in zip(data.leads[MIN_OUTCOMES:], data.converted[MIN_OUTCOMES:], strict=True):
            record(b, rep, lead["lead_id"], bool(won), lead)
        poll(lambda: score(a, rep, probe)["model_version"], lambda v: v == "tenant-v2")

        # Tenant versions are tested out of sample: out-of-fold on what they learned from.
        test = a.post(MODEL_TEST, headers=manager, json={"a": "tenant-v1", "b": "tenant-v2"})
        assert test.status_code == 200, test.text
        result = test.json()
        assert (result["a"]["out_of_fold"], result["a"]["predicted"]) == (MIN_OUTCOMES, RETRAIN_EVERY)
        assert (result["b"]["out_of_fold"], result["b"]["predicted"]) == (MIN_OUTCOMES + RETRAIN_EVERY, 0)
        assert "out-of-fold" in result["a"]["evaluation"] and result["outcomes"]["count"] == MIN_OUTCOMES + RETRAIN_EVERY
        versus_prior = a.post(MODEL_TEST, headers=manager, json={"a": "logreg-v2", "b": "tenant-v2"}).json()
        assert versus_prior["a"]["predicted"] == MIN_OUTCOMES + RETRAIN_EVERY

        # Each version keeps the out-of-fold probability of every lead it learned from: a
        # lead's export shows them, and its erasure takes them out of every version.
        gone, admin = data.leads[0]["lead_id"], replicas.headers(tenant, ("admin",))
        export = f"/api/v1/ai/privacy/customers/{gone}/export"
        held = a.get(export, headers=admin).json()["scoring_model_predictions"]
        assert [p["model_version"] for p in held] == [1, 2], held
        erased = b.delete(f"/api/v1/ai/privacy/customers/{gone}", headers=admin).json()["erased"]
        assert erased["scoring_model_predictions"] == 2 and erased["lead_outcomes"] == 1
        assert a.get(export, headers=admin).json()["scoring_model_predictions"] == []


# -- the trigger, deterministically ------------------------------------------------------------

class InlineCpu:
    """Runs the training job in this process (the service uses its worker processes)."""

    async def run(self, tenant_id: str, fn: Callable[..., Any], /, *args: Any) -> Any:
        return fn(*args)


async def test_training_is_due_at_the_minimum_with_both_kinds_then_every_n(tmp_path: Path) -> None:
    engine = create_engine(to_async_url(None, tmp_path / "trainer.sqlite3"))
    await migrate(engine)
    outcomes, registry = OutcomeLog(engine, keyring_for(engine)), ModelRegistry(engine, keep=2)
    models = TenantScoringModels(ModelRouting(train_models(), "logreg-v2", {}), registry, check_every_s=60)
    audit = AuditLog(engine, keyring_for(engine), interrupted_after_s=900, process_id="test")
    trainer = TenantModelTrainer(outcomes=outcomes, registry=registry, models=models, cpu=InlineCpu(), audit=audit,
                                 min_outcomes=30, retrain_every=10, max_outcomes=1_000)
    data = generate_leads(80, seed=3, funnel=TENANT_FUNNEL)

    async def add(index: int, won: bool) -> None:
        lead = data.leads[index]
        await outcomes.record(tenant_id="t", lead_id=lead["lead_id"], outcome="won" if won else "lost",
                              features=lead, features_from="request", user_id="u")

    try:
        for index in range(30):
            await add(index, won=False)
        assert await trainer.train_if_due("t") is None, "30 outcomes, but all lost"
        await add(0, won=True)  # the same lead again: its latest outcome counts, once
        assert (await outcomes.counts("t")).leads == 30
        first = await trainer.train_if_due("t")
        assert first is not None and first.name == "tenant-v1" and first.training_size == 30
        assert (await models.for_tenant("t")).version == "tenant-v1", "serves at once where it was trained"
        assert await trainer.train_if_due("t") is None
        for index in range(30, 39):
            await add(index, won=bool(data.converted[index]))
        assert await trainer.train_if_due("t") is None, "9 new outcomes: not yet"
        await add(39, won=True)
        assert (await trainer.train_if_due("t")).name == "tenant-v2"  # type: ignore[union-attr]
        for index in range(40, 50):
            await add(index, won=bool(data.converted[index]))
        trainer.outcome_recorded("t")  # the path the route takes: returns at once, trains in a task
        await trainer.idle()
        assert [info.name for info in await registry.list("t")] == ["tenant-v3", "tenant-v2"], "keeps the newest 2"
        assert (await models.for_tenant("t")).version == "tenant-v3"
        assert await registry.newest("other") is None and (await models.for_tenant("other")).version == "logreg-v2"
    finally:
        await audit.close()
        await engine.dispose()


class ErasingWhileTraining:
    """Runs the training job in this process and, while it runs, erases through the
    erasure the privacy routes call: the moment between reading the outcomes and storing
    the model."""

    def __init__(self, erase: Callable[[], Awaitable[dict[str, int]]]) -> None:
        self.erase = erase
        self.erased: dict[str, int] = {}

    async def run(self, tenant_id: str, fn: Callable[..., Any], /, *args: Any) -> Any:
        trained = fn(*args)
        self.erased = await self.erase()
        return trained


async def test_a_lead_erased_while_a_model_trains_is_not_stored_with_it(database_url: str | None, tmp_path: Path) -> None:
    """The new version's out-of-fold map held a prediction for a lead erased meanwhile:
    its export showed it again, and nothing would ever erase it. Recording the lead again
    after its erasure does not bring the erased recording's prediction back."""
    engine = create_engine(to_async_url(database_url, tmp_path / "erased.sqlite3"))
    await migrate(engine)
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    outcomes, registry = OutcomeLog(engine, keyring_for(engine)), ModelRegistry(engine, keep=2)
    records = CustomerRecords(engine, keyring_for(engine))
    models = TenantScoringModels(ModelRouting(train_models(), "logreg-v2", {}), registry, check_every_s=60)
    audit = AuditLog(engine, keyring_for(engine), interrupted_after_s=900, process_id="test")
    data = generate_leads(41, seed=5, funnel=TENANT_FUNNEL)
    gone = data.leads[0]["lead_id"]

    async def erase_then_record_again() -> dict[str, int]:
        """The lead erased, then recorded again: its new recording is not what the model learned from."""
        erased = await records.erase(tenant, gone)
        await outcomes.record(tenant_id=tenant, lead_id=gone, outcome="lost", features=data.leads[0],
                              features_from="request", user_id="u")
        return erased

    cpu = ErasingWhileTraining(erase_then_record_again)
    trainer = TenantModelTrainer(outcomes=outcomes, registry=registry, models=models, cpu=cpu, audit=audit,
                                 min_outcomes=30, retrain_every=10, max_outcomes=1_000)
    try:
        for index, lead in enumerate(data.leads[:30]):
            await outcomes.record(tenant_id=tenant, lead_id=lead["lead_id"], outcome="won" if index % 3 == 0 else "lost",
                                  features=lead, features_from="request", user_id="u")
        stored = await trainer.train_if_due(tenant)
        assert stored is not None and stored.training_size == 30, "trained on the lead, before its erasure"
        assert cpu.erased["lead_outcomes"] == 1
        model = await registry.by_name(tenant, stored.name)
        assert model is not None and gone not in model.out_of_fold and len(model.out_of_fold) == 29
        assert (await records.export(tenant, gone))[MODEL_PREDICTIONS] == []

        # A whole tenant erased meanwhile: no version of its own outlives it.
        for lead in data.leads[30:41]:  # 41 leads with outcomes now, 11 more than when v1 trained
            await outcomes.record(tenant_id=tenant, lead_id=lead["lead_id"], outcome="won", features=lead,
                                  features_from="request", user_id="u")
        cpu.erase = lambda: records.erase_tenant(tenant)
        assert await trainer.train_if_due(tenant) is None
        assert cpu.erased["scoring_models"] == 1 and await registry.list(tenant) == []
        assert (await models.for_tenant(tenant)).version == "tenant-v1", "no version of the erased tenant activated"
    finally:
        await audit.close()
        await engine.dispose()


async def test_on_postgresql_a_model_stored_while_an_erasure_is_under_way_waits_for_it() -> None:
    """The erasure's transaction has deleted the lead's outcome but not committed when
    the model is stored: a plain read of the outcomes still saw the lead then, and stored
    its prediction after the erasure had finished with the models."""
    with postgres_server() as url:
        engine = create_engine(to_async_url(url, Path("/unused")))
        await migrate(engine)
        outcomes, registry = OutcomeLog(engine, keyring_for(engine)), ModelRegistry(engine, keep=2)
        models = TenantScoringModels(ModelRouting(train_models(), "logreg-v2", {}), registry, check_every_s=60)
        audit = AuditLog(engine, keyring_for(engine), interrupted_after_s=900, process_id="test")
        trainer = TenantModelTrainer(outcomes=outcomes, registry=registry, models=models, cpu=InlineCpu(),
                                     audit=audit, min_outcomes=30, retrain_every=10, max_outcomes=1_000)
        data = generate_leads(40, seed=5, funnel=TENANT_FUNNEL)
        gone = data.leads[0]["lead_id"]
        try:
            for index, lead in enumerate(data.leads[:30]):
                await outcomes.record(tenant_id="t", lead_id=lead["lead_id"], outcome="won" if index % 3 == 0 else "lost",
                                      features=lead, features_from="request", user_id="u")
            with psycopg.connect(url) as erasure, psycopg.connect(url, autocommit=True) as watcher:
                erasure.execute("DELETE FROM lead_outcomes WHERE tenant_id = 't' AND lead_id = %s", (gone,))
                training = asyncio.ensure_future(trainer.train_if_due("t"))
                waited = False
                for _ in range(600):  # until the model's store waits for the erasure's lock
                    waiting = watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                              " AND datname = current_database()").fetchone()
                    waited = waiting is not None and waiting[0] > 0
                    if training.done() or waited:
                        break
                    await asyncio.sleep(0.05)
                assert waited and not training.done(), "stored while the erasure was under way"
                erasure.commit()
            stored = await training
            assert stored is not None
            model = await registry.by_name("t", stored.name)
            assert model is not None and gone not in model.out_of_fold and len(model.out_of_fold) == 29
        finally:
            await audit.close()
            await engine.dispose()
