"""A saturated database pool answers a retryable 503, and no run is left unaccounted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from app.api.chains import INSIGHTS_CHAT_PATH
from app.core.auth import TokenVerifier
from app.server import create_app
from tests.conftest import make_settings
from tests.support.live_server import live_server


async def test_a_busy_pool_gives_retryable_503s_not_500s(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, database_pool_size=1, database_max_overflow=0,
                             database_pool_timeout_s=0.01)
    verifier = TokenVerifier(settings)
    rep = {"Authorization": f"Bearer {verifier.mint(tenant_id='busy', user_id='u', roles=('rep',))}"}
    admin = {"Authorization": f"Bearer {verifier.mint(tenant_id='busy', user_id='a', roles=('admin',))}"}
    with live_server(create_app(settings)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=80)) as http:
            responses = await asyncio.gather(*(
                http.post(f"{INSIGHTS_CHAT_PATH}/invoke", headers=rep, json={
                    "input": {"customer_id": f"c-{n}", "question": f"Anything about order {n}?"}})
                for n in range(80)
            ))
            await asyncio.sleep(2)  # let the audit writer catch up (it retries a busy pool)
            runs = (await http.get("/api/v1/ai/usage/runs", headers=admin, params={"limit": 500})).json()
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    assert 503 in statuses, "the pool was saturated"
    for response in responses:
        if response.status_code == 503:
            body = response.json()
            assert body["retryable"] is True and response.headers["retry-after"] == "1", body
    assert all(run["status"] != "running" for run in runs), "every run that started was closed"
