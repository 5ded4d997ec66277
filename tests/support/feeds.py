"""How a WebSocket feed ended, as a client sees it; and a fault inside a feed."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import FastAPI
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


async def close_of(base_url: str, token: str, path: str) -> tuple[int, str]:
    """The close code and reason of the feed at `path`, whatever it sent before."""
    url = base_url.replace("http://", "ws://") + path
    async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        try:
            async with asyncio.timeout(30):
                async for _ in ws:
                    pass
        except ConnectionClosed:
            pass
    return ws.close_code or 0, ws.close_reason or ""


RESUME_FROM = "1700000000000-0"  # a feed given a resume point replays from the bus first


def break_the_replay(monkeypatch: pytest.MonkeyPatch, app: FastAPI, message: str = "a bug in the replay") -> None:
    """The bus's replay raises `RuntimeError(message)`: a fault inside every feed that
    resumes (from `RESUME_FROM`), on the real app."""
    async def broken_replay(channel: str, after_id: str | None) -> list[object]:
        raise RuntimeError(message)

    monkeypatch.setattr(app.state.services.bus, "history", broken_replay)
