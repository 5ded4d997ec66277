"""How a WebSocket feed ended, as a client sees it."""

from __future__ import annotations

import asyncio

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
