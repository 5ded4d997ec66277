"""Security violations are recorded through the real HTTP and WebSocket paths, read back
through the API: tenant admins see their tenant's, operators see all, refused tokens go
to the tenant-less bucket, and a flood is only counted, not written."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from langserve.lzstring import LZString
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from app.api.chains import INSIGHTS_CHAT_PATH, LEAD_SCORING_PATH
from app.core.auth import TokenVerifier
from app.server import create_app
from tests.conftest import TEST_SECRET, make_settings
from tests.support.live_server import live_server
from tests.support.payloads import LEAD
from tests.support.servers import postgres_server

ISSUER, AUDIENCE = "https://issuer.test", "crm-ai"
EVENTS, ALL_EVENTS = "/api/v1/ai/security/events", "/api/v1/ai/security/events/all"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, TokenVerifier]]:
    def start(database: str | None) -> Iterator[tuple[str, TokenVerifier]]:
        settings = make_settings(tmp_path_factory.mktemp("security"), database_url=database,
                                 auth_issuer=ISSUER, auth_audience=AUDIENCE)
        with live_server(create_app(settings)) as url:
            yield url, TokenVerifier(settings)

    if request.param == "sqlite":
        yield from start(None)
    else:
        with postgres_server() as pg:
            yield from start(pg)


@pytest.fixture
def http(service: tuple[str, TokenVerifier]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service[0], timeout=30) as client:
        yield client


@pytest.fixture
def auth(service: tuple[str, TokenVerifier]) -> Callable[..., dict[str, str]]:
    def headers(tenant: str, user: str = "u1", roles: tuple[str, ...] = ("rep",)) -> dict[str, str]:
        return {"Authorization": f"Bearer {service[1].mint(tenant_id=tenant, user_id=user, roles=roles)}"}
    return headers


def events_until(http: httpx.Client, path: str, headers: dict[str, str], found: Callable[[list[dict[str, Any]]], bool],
                 **params: Any) -> list[dict[str, Any]]:
    """Events are written without holding up the request: poll until they are there."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        response = http.get(path, headers=headers, params={"limit": 500, **params})
        assert response.status_code == 200, response.text
        events = response.json()
        if found(events):
            return events
        time.sleep(0.1)
    raise AssertionError(f"expected events never arrived: {events}")


def raw_token(**claims: Any) -> str:
    return jwt.encode({"sub": "mallory", "tenant_id": "acme", "roles": ["admin"], "exp": int(time.time()) + 600,
                       **claims}, TEST_SECRET, algorithm="HS256")


def test_refused_tokens_go_to_the_tenantless_bucket_that_only_operators_read(
    http: httpx.Client, auth: Callable[..., dict[str, str]]
) -> None:
    wrong = {
        "token_wrong_audience": raw_token(iss=ISSUER, aud="another-service", sub="aud-probe"),
        "token_wrong_issuer": raw_token(iss="https://evil.test", aud=AUDIENCE, sub="iss-probe"),
        "token_rejected": raw_token(iss=ISSUER, aud=AUDIENCE)[:-4] + "AAAA",
    }
    for token in wrong.values():
        response = http.get("/api/v1/ai/usage", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
    operator = auth("operator", "olga", roles=("operator",))
    events = events_until(http, ALL_EVENTS, operator, lambda e: set(wrong) <= {x["kind"] for x in e}, tenant_id="-")
    for kind in wrong:
        event = next(e for e in events if e["kind"] == kind)
        assert (event["tenant_id"], event["user_id"]) == ("-", "-"), "nothing of a refused token is trusted"
        assert event["route"] == "/api/v1/ai/usage" and event["client_address"] == "127.0.0.1"
    # A tenant's admin never sees them, even of a token that claimed its tenant.
    assert not [e for e in http.get(EVENTS, headers=auth("acme", roles=("admin",))).json()
                if e["kind"].startswith("token_")]


def test_operator_is_no_tenant_role_and_operator_routes_are_operators_only(
    http: httpx.Client, auth: Callable[..., dict[str, str]]
) -> None:
    operator = auth("operator", "olga", roles=("operator",))
    assert http.post(f"{LEAD_SCORING_PATH}/invoke", headers=operator, json={"input": LEAD}).status_code == 403
    assert http.get(EVENTS, headers=operator).status_code == 403
    assert http.get(ALL_EVENTS, headers=auth("acme", roles=("admin", "manager", "rep"))).status_code == 403
    # The role alone is not enough: operators belong to OPERATOR_TENANT.
    assert http.get(ALL_EVENTS, headers=auth("acme", roles=("operator",))).status_code == 403
    assert http.get(ALL_EVENTS, headers=operator, params={"tenant_id": "bad tenant!"}).status_code == 422
    assert http.get(ALL_EVENTS, headers=operator, params={"limit": 0}).status_code == 422
    # The operator's own refusals are on record, under the operator token's tenant.
    events = events_until(http, ALL_EVENTS, operator,
                          lambda e: sum(x["kind"] == "forbidden_role" for x in e) >= 2, tenant_id="operator")
    assert {e["route"] for e in events if e["kind"] == "forbidden_role"} >= {f"{LEAD_SCORING_PATH}/invoke", EVENTS}


def test_a_forbidden_role_is_recorded_for_the_tenants_admins(
    http: httpx.Client, auth: Callable[..., dict[str, str]]
) -> None:
    refused = http.post("/api/v1/ai/insights/documents", headers=auth("roles-t", "victor", roles=("viewer",)),
                        json={"title": "t", "text": "x"})
    assert refused.status_code == 403
    events = events_until(http, EVENTS, auth("roles-t", "ada", roles=("admin",)),
                          lambda e: any(x["kind"] == "forbidden_role" for x in e))
    event = next(e for e in events if e["kind"] == "forbidden_role")
    assert event["user_id"] == "victor" and event["route"] == "/api/v1/ai/insights/documents"
    assert event["detail"]["roles"] == ["viewer"] and "rep" in event["detail"]["required"]


def test_identity_overrides_in_config_metadata_input_and_path_config_are_recorded(
    http: httpx.Client, auth: Callable[..., dict[str, str]]
) -> None:
    rep = auth("spoof-t", "sam")
    spoof = {"configurable": {"tenant_id": "globex"}, "metadata": {"user_id": "root"}}
    requests = [
        (f"{LEAD_SCORING_PATH}/invoke", {"input": LEAD, "config": spoof}),
        (f"{LEAD_SCORING_PATH}/batch", {"inputs": [LEAD, {**LEAD, "tenant_id": "globex"}]}),
        (f"{LEAD_SCORING_PATH}/c/{LZString.compressToEncodedURIComponent(json.dumps(spoof))}/invoke", {"input": LEAD}),
        (f"{LEAD_SCORING_PATH}/invoke", {"input": {**LEAD, "tenant_id": "spoof-t", "user_id": "sam"}}),  # its own
    ]
    for path, body in requests:
        response = http.post(path, headers=rep, json=body)
        assert response.status_code == 200, response.text
        assert "logreg" in json.dumps(response.json())
    events = events_until(http, EVENTS, auth("spoof-t", "ada", roles=("admin",)),
                          lambda e: sum(x["kind"] == "identity_override" for x in e) >= 3)
    places = sorted(o["where"] for e in events if e["kind"] == "identity_override" for o in e["detail"]["overrides"])
    assert places == ["config.configurable.tenant_id", "config.metadata.user_id", "inputs[1].tenant_id",
                      "path config.configurable.tenant_id", "path config.metadata.user_id"]
    assert all(e["user_id"] == "sam" for e in events if e["kind"] == "identity_override")


def test_reaching_for_another_tenants_document_lead_or_chat_session_is_recorded(
    http: httpx.Client, auth: Callable[..., dict[str, str]]
) -> None:
    owner, prober = auth("owner-t", "olive"), auth("prober-t", "pete")
    created = http.post("/api/v1/ai/insights/documents", headers=owner, json={"title": "Plan", "text": "Secret plan."})
    assert created.status_code == 201
    document_id = created.json()["document_id"]
    lead = {**LEAD, "lead_id": "lead-owner-only"}
    assert http.post(f"{LEAD_SCORING_PATH}/invoke", headers=owner, json={"input": lead}).status_code == 200
    deadline = time.monotonic() + 20
    while http.get("/api/v1/ai/scoring/leads/lead-owner-only", headers=owner).status_code != 200:
        assert time.monotonic() < deadline, "the owner's score was never stored"
        time.sleep(0.1)
    chat = {"customer_id": "c-1", "question": "What is the plan?", "session_id": "owner-session-7f3a"}
    assert http.post(f"{INSIGHTS_CHAT_PATH}/invoke", headers=owner, json={"input": chat}).status_code == 200

    assert http.get(f"/api/v1/ai/insights/documents/{document_id}", headers=prober).status_code == 404
    assert http.delete(f"/api/v1/ai/insights/documents/{document_id}", headers=prober).status_code == 404
    assert http.get("/api/v1/ai/scoring/leads/lead-owner-only", headers=prober).status_code == 404
    assert http.post(f"{INSIGHTS_CHAT_PATH}/invoke", headers=prober, json={"input": chat}).status_code == 200

    def complete(events: list[dict[str, Any]]) -> bool:
        return len([e for e in events if e["kind"] in ("cross_tenant_resource", "foreign_session")]) >= 4

    def probed(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in events if e["kind"] in ("cross_tenant_resource", "foreign_session")
                and e["detail"]["tenant_id"] == "prober-t"]

    # Operators read them, tenant-less: in the prober's own tenant they would tell its
    # admin which of the ids tried exist in another tenant.
    operator = auth("operator", "olga", roles=("operator",))
    events = probed(events_until(http, ALL_EVENTS, operator, lambda e: complete(probed(e)), tenant_id="-"))
    found = sorted((e["kind"], e["detail"]["resource"], e["detail"]["id"], e["route"]) for e in events)
    assert found == [
        ("cross_tenant_resource", "document", document_id, "/api/v1/ai/insights/documents/{document_id}"),
        ("cross_tenant_resource", "document", document_id, "/api/v1/ai/insights/documents/{document_id}"),
        ("cross_tenant_resource", "lead", "lead-owner-only", "/api/v1/ai/scoring/leads/{lead_id:lead_id}"),
        ("foreign_session", "chat_session", "owner-session-7f3a", f"{INSIGHTS_CHAT_PATH}/invoke"),
    ]
    assert all(e["user_id"] == "pete" for e in events)
    own = http.get(EVENTS, headers=auth("prober-t", "ada", roles=("admin",)), params={"limit": 500}).json()
    assert not [e for e in own if e["kind"] in ("cross_tenant_resource", "foreign_session")]
    # The owner's legitimate second turn in its own session is no event.
    assert http.post(f"{INSIGHTS_CHAT_PATH}/invoke", headers=owner, json={"input": chat}).status_code == 200
    assert http.get(f"/api/v1/ai/insights/documents/{document_id}", headers=owner).status_code == 200


async def test_a_websocket_with_a_bad_token_is_recorded(
    service: tuple[str, TokenVerifier], auth: Callable[..., dict[str, str]]
) -> None:
    url, _ = service
    bad = raw_token(iss=ISSUER, aud="another-service", sub="ws-probe")
    async with connect(url.replace("http", "ws") + "/ws/ai/insights/c-1",
                       additional_headers={"Authorization": f"Bearer {bad}"}) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    with httpx.Client(base_url=url, timeout=30) as http:
        events = events_until(http, ALL_EVENTS, auth("operator", "olga", roles=("operator",)),
                              lambda e: any(x["route"] == "/ws/ai/insights/{customer_id}" for x in e),
                              kind="token_wrong_audience")
    assert events[0]["tenant_id"] == "-"


def metric(text: str, name: str, kind: str) -> float:
    match = re.search(rf'^{name}{{kind="{kind}"}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_a_flood_of_bad_tokens_is_counted_but_only_its_budget_is_written(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, security_log_per_client="5/hour", security_log_per_kind="1000/hour")
    operator = {"Authorization": "Bearer " + TokenVerifier(settings).mint(tenant_id="operator", user_id="o",
                                                                          roles=("operator",))}
    with live_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as http:
        before = http.get("/metrics").text
        for _ in range(30):
            assert http.get("/api/v1/ai/usage", headers={"Authorization": "Bearer not-a-jwt"}).status_code == 401
        after = http.get("/metrics").text
        for name, added in (("ai_security_events_total", 30), ("ai_security_events_suppressed_total", 25)):
            assert metric(after, name, "token_rejected") - metric(before, name, "token_rejected") == added
        events = events_until(http, ALL_EVENTS, operator, lambda e: len(e) >= 5, tenant_id="-")
        assert len(events) == 5 and {e["detail"]["reason"] for e in events} == {"malformed"}
