"""Push on the embedded defaults (in-process bus): cookie auth, heartbeats, auth timeout."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.api.chains import INTERACTIONS_PATH
from app.core.auth import TokenVerifier
from app.core.config import Settings
from app.server import create_app
from tests.conftest import make_settings
from tests.support.live_server import live_server


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(tmp_path_factory.mktemp("push"), push_heartbeat_s=0.2, ws_auth_timeout_s=0.3)


@pytest.fixture(scope="module")
def url(settings: Settings) -> Iterator[str]:
    with live_server(create_app(settings)) as url:
        yield url


def mint(settings: Settings, tenant: str = "acme", roles: tuple[str, ...] = ("viewer",)) -> str:
    return TokenVerifier(settings).mint(tenant_id=tenant, user_id="v", roles=roles)


async def test_cookie_signed_in_browser_watches_and_gets_heartbeats(url: str, settings: Settings) -> None:
    ws_url = url.replace("http", "ws") + "/ws/ai/insights/cust-1"
    async with connect(ws_url, additional_headers={"Cookie": f"crm_session={mint(settings)}"}) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        assert json.loads(await ws.recv())["type"] == "heartbeat"
        await ws.send(json.dumps({"type": "ping"}))
        kinds = {json.loads(await ws.recv())["type"] for _ in range(3)}
        assert "pong" in kinds
        async with httpx.AsyncClient(base_url=url, headers={
                "Authorization": f"Bearer {mint(settings, roles=('rep',))}"}) as http:
            await http.post(f"{INTERACTIONS_PATH}/invoke", json={"input": {
                "customer_id": "cust-1", "text": "Thanks for the help!", "channel": "sms"}})
        while (message := json.loads(await ws.recv()))["type"] == "heartbeat":
            pass
        assert message["type"] == "insight" and message["data"]["channel"] == "sms"


async def test_silent_websocket_is_closed_with_4401(url: str) -> None:
    async with connect(url.replace("http", "ws") + "/ws/ai/scoring") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


async def test_a_message_past_the_limit_is_refused_before_it_is_parsed(url: str, settings: Settings) -> None:
    """A first message is read before anyone is known: 16 MiB of `0,` took 1.2 GB and the
    loop for seconds to parse (a security review). Past `ws_message_max_chars` a message
    is refused unread, a valid auth message too; in a session the socket stays open."""
    padding = "x" * settings.ws_message_max_chars
    async with connect(url.replace("http", "ws") + "/ws/ai/scoring") as ws:
        await ws.send(json.dumps({"type": "auth", "token": mint(settings), "padding": padding}))
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    async with connect(url.replace("http", "ws") + "/ws/ai/scoring") as ws:
        await ws.send(json.dumps({"type": "auth", "token": mint(settings)}))
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.send(json.dumps({"type": "ping", "padding": padding}))
        while (message := json.loads(await ws.recv()))["type"] == "heartbeat":
            pass
        assert message["type"] == "error" and "at most" in message["message"]
        await ws.send(json.dumps({"type": "ping"}))
        while (message := json.loads(await ws.recv()))["type"] == "heartbeat":
            pass
        assert message["type"] == "pong"


async def test_a_customer_id_outside_the_contract_is_refused_at_the_handshake(url: str, settings: Settings) -> None:
    headers = {"Authorization": f"Bearer {mint(settings)}"}
    base = url.replace("http", "ws") + "/ws/ai/insights/"
    for bad in ("-dash-first", "x" * 129, "semi;colon"):  # each matches the route's path pattern
        with pytest.raises(InvalidStatus) as refused:
            async with connect(base + quote(bad), additional_headers=headers):
                pass
        assert refused.value.response.status_code == 403, bad
    async with connect(base + "x" * 128, additional_headers=headers) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"


def test_sse_feed_requires_auth_and_a_watcher_role(url: str, settings: Settings) -> None:
    path = "/api/v1/ai/stream/insights/cust-1"
    assert httpx.get(url + path).status_code == 401
    no_roles = {"Authorization": f"Bearer {mint(settings, roles=())}"}
    assert httpx.get(url + path, headers=no_roles).status_code == 403
    assert httpx.get(url + "/api/v1/ai/stream/insights/bad%20id",
                     headers={"Authorization": f"Bearer {mint(settings)}"}).status_code == 422
