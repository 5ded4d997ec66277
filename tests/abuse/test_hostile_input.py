"""Hostile bodies and messages get a clear 4xx (or an error message), never a 500."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from app.api.chains import INSIGHTS_CHAT_PATH, INTERACTIONS_PATH, LEAD_SCORING_PATH
from tests.support.payloads import CHAIN_INPUTS, INTERACTION, LEAD

DEEP = b'{"input": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
HOSTILE_BODIES: dict[str, bytes] = {
    "nested 10,000 deep": DEEP,
    "nested in config": b'{"input": {"lead_id": "l"}, "config": ' + b'{"a":' * 5_000 + b"1" + b"}" * 5_000 + b"}",
    "NaN in a failing field": b'{"input": {"lead_id": "l", "company_size": NaN}}',
    "Infinity in a number": b'{"input": {"lead_id": "l", "budget_usd": Infinity}}',
    "1e400 budget": b'{"input": {"lead_id": "l", "budget_usd": 1e400}}',
    "-Infinity": b'{"input": {"lead_id": "l", "email_opens_30d": -Infinity}}',
    "lone surrogate in a failing field": b'{"input": {"lead_id": "l", "company_size": "\\ud800"}}',
    "lone surrogate in a valid field": b'{"input": {"lead_id": "\\udfff"}}',
    "lone surrogate in a key": b'{"input": {"lead_id": "l", "\\ud800": 1}}',
}
ENDPOINTS = ["invoke", "batch", "stream", "stream_events"]


def as_batch(raw: bytes) -> bytes:
    return raw.replace(b'{"input": ', b'{"inputs": [', 1)[:-1] + b"]}" if raw.startswith(b'{"input": ') else raw


@pytest.mark.parametrize("name", list(HOSTILE_BODIES))
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_hostile_json_gets_422_on_every_chain_endpoint(client: httpx.Client, name: str, endpoint: str) -> None:
    raw = HOSTILE_BODIES[name]
    body = as_batch(raw) if endpoint == "batch" else raw
    for path in (LEAD_SCORING_PATH, INTERACTIONS_PATH, INSIGHTS_CHAT_PATH):
        response = client.post(f"{path}/{endpoint}", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422, (path, response.status_code, response.text[:300])
        json.loads(response.text)  # the refusal itself is valid JSON


@pytest.mark.parametrize("name", list(HOSTILE_BODIES))
def test_hostile_json_gets_422_on_plain_routes(client: httpx.Client, name: str) -> None:
    raw = HOSTILE_BODIES[name].replace(b'"lead_id"', b'"title"')
    response = client.post("/api/v1/ai/insights/documents", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, (response.status_code, response.text[:300])


def test_huge_but_finite_numbers_are_scored_not_crashed(client: httpx.Client) -> None:
    response = client.post(f"{LEAD_SCORING_PATH}/invoke", json={"input": {**LEAD, "budget_usd": 1e300}})
    assert response.status_code == 200, response.text
    assert 0 <= response.json()["output"]["score"] <= 100


@pytest.mark.parametrize("tenant", ["acme\n", "acme\r\n", " acme", "acme/../globex"])
def test_tenant_ids_with_trailing_newlines_are_refused(client: httpx.Client, tenant: str) -> None:
    import time

    import jwt

    from tests.conftest import TEST_SECRET

    token = jwt.encode({"sub": "u", "tenant_id": tenant, "roles": ["rep"], "exp": int(time.time()) + 60},
                       TEST_SECRET, algorithm="HS256")
    response = client.post(f"{LEAD_SCORING_PATH}/invoke", json={"input": LEAD},
                           headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


def test_an_8_mb_authorization_header_is_refused_without_echo(anonymous: httpx.Client) -> None:
    response = anonymous.post(f"{LEAD_SCORING_PATH}/invoke", json={"input": LEAD},
                              headers={"Authorization": "Bearer " + "a" * 200_000})
    assert response.status_code in (401, 431), response.status_code
    assert len(response.content) < 1_000


@pytest.mark.parametrize("token", ["not.a.jwt", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.<script>", "a.b"])
def test_malformed_tokens_get_a_generic_401(anonymous: httpx.Client, token: str) -> None:
    response = anonymous.post(f"{LEAD_SCORING_PATH}/invoke", json={"input": LEAD},
                              headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    detail = response.json()["detail"]
    assert detail in {"malformed token", "invalid token", "token algorithm is not accepted"}, detail


@pytest.mark.parametrize("query", [
    "until=0001-01-01T00:00:00Z",  # no 30 days before it
    "since=0001-01-01T00:00:00%2B14:00",  # no UTC form
    "since=9999-12-31T23:59:59-14:00",
])
def test_usage_at_the_ends_of_the_calendar_is_422(service_url: str, mint: Callable[..., str], query: str) -> None:
    response = httpx.get(f"{service_url}/api/v1/ai/usage?{query}",
                         headers={"Authorization": f"Bearer {mint(roles=('admin',))}"}, timeout=10)
    assert response.status_code == 422, response.text


BAD_RESUME_IDS = ["99999999999999999999-0", "9" * 4000 + "-0", "abc", "-1-0", "1-", "18446744073709551616-0"]
BAD_MESSAGES = [
    {"type": "resume", "last_event_id": {"nested": ["x"]}},
    {"type": "resume", "last_event_id": 12345},
    {"type": "resume"},
    {"type": {"nested": True}},
    ["not", "an", "object"],
    "just a string",
    {"type": "auth", "token": ["x"]},
    {"type": "auth", "token": "forged"},
]
# Sent as they are: Python's own json module could not write them.
DEEP_TEXTS = ["[" * 5_000 + "]" * 5_000, '{"type":' * 3_000 + "1" + "}" * 3_000, '{"type": "ping", "n": NaN}']


async def test_bad_resume_ids_and_messages_get_an_error_and_keep_the_socket(
    service_url: str, mint: Callable[..., str]
) -> None:
    ws_url = service_url.replace("http://", "ws://") + "/ws/ai/insights/cust-hostile"
    # On connect: a bad ?last_event_id= is ignored (no replay), the feed still starts.
    for bad in BAD_RESUME_IDS:
        async with connect(f"{ws_url}?last_event_id={bad}",
                           additional_headers={"Authorization": f"Bearer {mint()}"}) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "ready"
    async with connect(ws_url, additional_headers={"Authorization": f"Bearer {mint()}"}) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        for bad in BAD_RESUME_IDS:
            await ws.send(json.dumps({"type": "resume", "last_event_id": bad}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["code"] == "invalid_event_id"
        for message in BAD_MESSAGES:
            await ws.send(json.dumps(message))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert reply["type"] == "error", (message, reply)
        for text in DEEP_TEXTS:
            await ws.send(text)
            reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert reply["type"] == "error" and reply["code"] == "invalid_message", (text[:20], reply)
        await ws.send(b"\x00binary frame")
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "error"
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "pong", "still open and serving"
    http = httpx.Client(base_url=service_url, headers={"Authorization": f"Bearer {mint()}"}, timeout=10)
    with http.stream("GET", "/api/v1/ai/stream/insights/cust-hostile",
                     headers={"Last-Event-ID": BAD_RESUME_IDS[1]}) as response:
        assert response.status_code == 200
    http.close()


@pytest.mark.parametrize("text", DEEP_TEXTS)
async def test_a_hostile_first_message_is_refused_4401(service_url: str, text: str) -> None:
    ws_url = service_url.replace("http://", "ws://") + "/ws/ai/insights/cust-hostile"
    async with connect(ws_url) as ws:
        await ws.send(text)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


def test_interaction_body_check_keeps_good_requests_working(client: httpx.Client) -> None:
    response = client.post(f"{INTERACTIONS_PATH}/invoke", json={"input": INTERACTION})
    assert response.status_code == 200
    assert client.post(f"{INSIGHTS_CHAT_PATH}/batch", json={"inputs": [CHAIN_INPUTS[INSIGHTS_CHAT_PATH]]}).status_code == 200
