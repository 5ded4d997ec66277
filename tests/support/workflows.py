"""Clients of the background-runs API for tests: start a run, follow it by SSE or
WebSocket (optionally leaving after a few events), read its whole log."""

from __future__ import annotations

import json
import operator
import time
from functools import reduce
from typing import Any

import httpx
from httpx_sse import connect_sse
from websockets.asyncio.client import connect

from chains.streaming import FieldChunk

WORKFLOWS = "/api/v1/ai/workflows"
SLOW_REPLY = " ".join(f"word{i}" for i in range(30))  # with a token delay: a run that lasts


def start(http: httpx.Client, chain: str, payload: dict[str, Any], **extra: Any) -> dict[str, Any]:
    response = http.post(WORKFLOWS, json={"chain": chain, "input": payload, **extra})
    assert response.status_code == 202, response.text
    run: dict[str, Any] = response.json()
    return run


def follow_sse(http: httpx.Client, run_id: str, *, last_event_id: str | None = None,
               leave_after: int | None = None, timeout_s: float | None = None) -> list[dict[str, Any]]:
    """The run's messages after `last_event_id` (all of them without), until `end`, until
    `leave_after` of them arrived, or until none came for `timeout_s`; then it leaves."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    messages: list[dict[str, Any]] = []
    timeout = httpx.Timeout(timeout_s) if timeout_s is not None else http.timeout
    with connect_sse(http, "GET", f"/api/v1/ai/stream/workflows/{run_id}", headers=headers,
                     timeout=timeout) as source:
        source.response.raise_for_status()
        try:
            for sse in source.iter_sse():
                message = json.loads(sse.data)
                assert sse.id == message["id"] and sse.event == message["type"]
                messages.append(message)
                if message["type"] == "end" or len(messages) == leave_after:
                    break
        except httpx.ReadTimeout:
            if timeout_s is None:
                raise
    return messages


async def follow_ws(base_url: str, token: str, run_id: str, *, last_event_id: str | None = None,
                    leave_after: int | None = None) -> list[dict[str, Any]]:
    """As `follow_sse`, over the WebSocket (heartbeats and `ready` left out)."""
    query = f"?last_event_id={last_event_id}" if last_event_id else ""
    url = base_url.replace("http://", "ws://") + f"/ws/ai/workflows/{run_id}{query}"
    messages: list[dict[str, Any]] = []
    async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        async for raw in ws:
            message = json.loads(raw)
            if message["type"] in ("ready", "heartbeat"):
                continue
            messages.append(message)
            if message["type"] == "end" or len(messages) == leave_after:
                break
    return messages


def wait_for_status(http: httpx.Client, run_id: str, statuses: set[str], timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        response = http.get(f"{WORKFLOWS}/{run_id}")
        assert response.status_code == 200, response.text
        run: dict[str, Any] = response.json()
        if run["status"] in statuses:
            return run
        assert time.monotonic() < deadline, f"run still {run['status']}, expected one of {statuses}"
        time.sleep(0.05)


def merged(messages: list[dict[str, Any]]) -> Any:
    """The `data` chunks added up as the server adds them (the chains' `FieldChunk`)."""
    chunks = [message["data"]["chunk"] for message in messages if message["type"] == "data"]
    return reduce(operator.add, [FieldChunk(c) for c in chunks]) if chunks else None
