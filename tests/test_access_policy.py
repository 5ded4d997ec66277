"""Deny by default: every route has an explicit policy, and roles are enforced."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import Route, WebSocketRoute
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from app.api import access
from app.api.access import policy_for
from app.api.streaming import feed_route
from app.api.chains import INSIGHTS_CHAT_PATH, INTERACTIONS_PATH, LEAD_SCORING_PATH
from app.server import create_app
from tests.conftest import make_settings
from tests.support.live_server import live_server
from tests.support.payloads import CHAIN_INPUTS

DOCUMENTATION_PATHS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def all_routes(routes: list) -> list:  # type: ignore[type-arg]
    """FastAPI 0.16x keeps included routers as nodes; our routers carry their own prefix."""
    flat = []
    for route in routes:
        included = getattr(route, "original_router", None)
        flat += all_routes(included.routes) if included is not None else [route]
    return flat


def unpoliced_routes(app) -> list[str]:  # type: ignore[no-untyped-def]
    missing = []
    for route in all_routes(app.routes):
        if isinstance(route, WebSocketRoute):  # FastAPI's and the plain feeds (app.api.streaming)
            methods = {"WEBSOCKET"}
        elif isinstance(route, APIRoute):
            methods = route.methods
        elif isinstance(route, Route) and route.path in DOCUMENTATION_PATHS:
            continue  # public by contract; FastAPI serves them without dependencies
        else:
            missing.append(f"{route!r} is not an API route the guard can see")
            continue
        missing += [f"{m} {route.path}" for m in methods if policy_for(route.path, m) is None]
    return missing


def test_every_route_has_an_explicit_policy(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))
    paths = {route.path for route in all_routes(app.routes)}
    assert {"/ws/ai/scoring", f"{INTERACTIONS_PATH}/invoke", f"{INSIGHTS_CHAT_PATH}/playground/{{file_path:path}}",
            "/api/v1/ai/usage", "/health", "/api/v1/ai/scoring/models/test"} <= paths, "the walk must see every kind of route"
    assert unpoliced_routes(app) == []


def test_a_route_added_without_a_policy_is_refused_and_caught(tmp_path: Path, mint: Callable[..., str]) -> None:
    app = create_app(make_settings(tmp_path))

    @app.get("/api/v1/ai/forgotten")
    async def forgotten() -> dict[str, str]:
        return {"secret": "leaked"}

    assert unpoliced_routes(app) == ["GET /api/v1/ai/forgotten"]
    with live_server(app) as url:
        response = httpx.get(f"{url}/api/v1/ai/forgotten", headers={"Authorization": f"Bearer {mint(roles=('admin',))}"})
    assert response.status_code == 403 and "no access policy" in response.json()["detail"]


async def handshake_refused(app: FastAPI, path: str, token: str) -> int:
    """The HTTP status a WebSocket handshake to `path` is refused with."""
    with live_server(app) as url:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url.replace("http", "ws") + path, additional_headers={"Authorization": f"Bearer {token}"}):
                pass
    return refused.value.response.status_code


async def test_a_plain_feed_added_without_a_policy_is_refused_and_caught(tmp_path: Path,
                                                                         mint: Callable[..., str]) -> None:
    """The long-lived feeds are plain Starlette routes, which FastAPI attaches no
    dependency to: they run the access guard themselves."""
    app = create_app(make_settings(tmp_path))
    app.router.routes.append(feed_route("/ws/ai/forgotten", "forgotten", lambda principal, _: "t:x:forgotten"))
    assert unpoliced_routes(app) == ["WEBSOCKET /ws/ai/forgotten"]
    assert await handshake_refused(app, "/ws/ai/forgotten", mint(roles=("admin",))) == 403


async def test_a_served_feed_whose_policy_goes_missing_is_refused(tmp_path: Path, mint: Callable[..., str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The feeds in `FEEDS` are handed to their endpoint past the exception middleware
    (app.api.feed_dispatch), so the endpoint itself turns the guard's refusal into a 403."""
    monkeypatch.delitem(access.ROUTE_POLICIES, "/ws/ai/scoring")
    app = create_app(make_settings(tmp_path))
    assert await handshake_refused(app, "/ws/ai/scoring", mint(roles=("admin",))) == 403


@pytest.mark.parametrize(
    ("roles", "method", "path", "body", "allowed"),
    [
        (("viewer",), "POST", "/api/v1/ai/insights/documents", {"title": "t", "text": "x"}, False),
        (("rep",), "POST", "/api/v1/ai/insights/documents", {"title": "t", "text": "x"}, True),
        (("viewer",), "POST", f"{INTERACTIONS_PATH}/invoke", {"input": CHAIN_INPUTS[INTERACTIONS_PATH]}, False),
        (("viewer",), "POST", f"{LEAD_SCORING_PATH}/invoke", {"input": CHAIN_INPUTS[LEAD_SCORING_PATH]}, False),
        (("viewer",), "GET", f"{INTERACTIONS_PATH}/playground/", None, False),
        (("viewer",), "POST", f"{INSIGHTS_CHAT_PATH}/invoke", {"input": CHAIN_INPUTS[INSIGHTS_CHAT_PATH]}, True),
        (("manager",), "POST", f"{LEAD_SCORING_PATH}/invoke", {"input": CHAIN_INPUTS[LEAD_SCORING_PATH]}, True),
        (("viewer",), "POST", "/api/v1/ai/scoring/outcomes", {"lead_id": "p-1", "outcome": "won", "lead": {}}, False),
        (("rep",), "POST", "/api/v1/ai/scoring/outcomes", {"lead_id": "p-1", "outcome": "won", "lead": {}}, True),
        (("viewer",), "GET", "/api/v1/ai/scoring/models", None, False),
        (("rep",), "GET", "/api/v1/ai/scoring/models", None, True),
        (("viewer",), "GET", f"{LEAD_SCORING_PATH}/lead-1", None, False),
        (("rep",), "POST", "/api/v1/ai/scoring/models/test", {"a": "logreg-v1", "b": "logreg-v2"}, False),
        (("rep",), "GET", "/api/v1/ai/usage", None, False),
        (("manager",), "GET", "/api/v1/ai/usage", None, False),
        (("admin",), "GET", "/api/v1/ai/usage", None, True),
        (("rep",), "GET", "/api/v1/ai/security/events", None, False),
        (("admin",), "GET", "/api/v1/ai/security/events", None, True),
        ((), "POST", f"{INSIGHTS_CHAT_PATH}/invoke", {"input": CHAIN_INPUTS[INSIGHTS_CHAT_PATH]}, False),
        (("superuser",), "GET", "/api/v1/ai/usage", None, False),
    ],
)
def test_roles(service_url: str, mint: Callable[..., str], roles: tuple[str, ...], method: str,
               path: str, body: dict | None, allowed: bool) -> None:
    response = httpx.request(method, service_url + path, json=body, timeout=30,
                             headers={"Authorization": f"Bearer {mint(roles=roles)}"})
    if allowed:
        assert response.status_code in (200, 201), response.text
    else:
        assert response.status_code == 403, response.text
        assert "detail" in response.json()


def test_metrics_can_be_put_behind_a_token_or_turned_off(tmp_path: Path) -> None:
    protected = create_app(make_settings(tmp_path / "a", metrics_token="scrape-secret-0123456789"))
    disabled = create_app(make_settings(tmp_path / "b", metrics_enabled=False))
    with live_server(protected) as url:
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer scrape-secret-0123456789"})
        assert ok.status_code == 200 and "ai_workflow_queue_depth" in ok.text
    with live_server(disabled) as url:
        assert httpx.get(f"{url}/metrics").status_code == 404
