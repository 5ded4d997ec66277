"""What an idle feed keeps alive for the hours a screen holds it open (#15: memory per idle
WebSocket). Sizes are the fan-out bench's to measure; this checks what is kept, on the
server as `scripts/run.sh` starts it."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import uvicorn
from websockets.asyncio.client import connect

from app.api.chains import INTERACTIONS_PATH
from app.api.ws_protocol import LeanWebSocketsProtocol
from app.server import create_app
from tests.conftest import make_settings
from tests.support.payloads import INTERACTION


def feed_tasks() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if task.get_coro().cr_frame.f_globals["__name__"] == "app.api.ws_session"]


def awaited_frames(task: asyncio.Task[Any]) -> list[FrameType]:
    """The frames a suspended task keeps, outermost first."""
    frames: list[FrameType] = []
    awaitable: Any = task.get_coro()
    while awaitable is not None and (frame := getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)):
        frames.append(frame)
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
    return frames


async def test_an_idle_feed_keeps_neither_the_stack_nor_the_handshake(
    tmp_path: Path, mint: Callable[..., str]
) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(
        create_app(make_settings(tmp_path)), log_level="warning", lifespan="on",
        ws="app.api.ws_protocol:LeanWebSocketsProtocol", ws_per_message_deflate=False))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not serving.done(), "the server did not start"
            await asyncio.sleep(0.01)
        async with connect(f"ws://127.0.0.1:{port}/ws/ai/insights/cust-1",
                           additional_headers={"Authorization": f"Bearer {mint()}"}) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            [session] = [task for task in asyncio.all_tasks() if task.get_coro().__name__ == "run_asgi"]
            frames = awaited_frames(session)
            protocol = frames[0].f_locals["self"]

            # The handshake is let go: the app authenticated from the scope's own headers.
            assert isinstance(protocol, LeanWebSocketsProtocol)
            assert protocol.response is None
            assert len(protocol.request.headers) == 0
            assert any(name == b"authorization" for name, _ in protocol.scope["headers"])

            # From the outermost user middleware straight to the feed: nothing of what lies
            # below it (exception middleware, exit stack, router, the route's wrapper).
            modules = [frame.f_globals["__name__"] for frame in frames]
            assert "app.api.streaming" in modules and "app.api.ws_session" in modules
            held = [name for name in modules if name.startswith(("starlette.routing", "fastapi.routing",
                                                                  "starlette.middleware.exceptions",
                                                                  "starlette._exception_handler",
                                                                  "fastapi.middleware"))]
            assert held == [], modules

            # One coroutine reads the client and follows the channel: no task of the feed's
            # own, no `asyncio.wait`, while nothing arrives.
            assert "asyncio.tasks" not in modules, modules
            assert feed_tasks() == []

            # And it is a working session: the client is answered, and a live event goes
            # out through a delivery task that ends once it is sent.
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await ws.recv())["type"] == "pong"
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30,
                                         headers={"Authorization": f"Bearer {mint()}"}) as http:
                analysed = await http.post(f"{INTERACTIONS_PATH}/invoke",
                                           json={"input": {**INTERACTION, "customer_id": "cust-1"}})
            assert analysed.status_code == 200, analysed.text
            while (message := json.loads(await asyncio.wait_for(ws.recv(), 10)))["type"] != "insight":
                pass
            assert message["data"]["summary"]
            for _ in range(100):
                if not feed_tasks():
                    break
                await asyncio.sleep(0.01)
            assert feed_tasks() == []
    finally:
        server.should_exit = True
        await serving
        sock.close()
