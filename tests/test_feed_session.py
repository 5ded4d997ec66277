"""A feed session on the server as `scripts/run.sh` starts it, run in the test's own event
loop so its tasks and frames can be looked at: what an idle feed keeps alive for the hours
a screen holds it open (#15: memory per idle WebSocket; the sizes are the fan-out bench's
to measure), and what ends a session while its live half is sending."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

from app.api.chains import INTERACTIONS_PATH
from app.api.ws_protocol import LeanWebSocketsProtocol
from app.realtime.events import customer_channel
from app.server import create_app
from tests.conftest import make_settings
from tests.support.live_server import server_config
from tests.support.payloads import INTERACTION


def feed_tasks() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks()
            if task.get_coro().cr_frame.f_globals["__name__"] == "app.api.ws_session"]


def awaited_frames(task: asyncio.Task[Any]) -> list[FrameType]:
    """The frames a suspended task keeps, outermost first."""
    frames: list[FrameType] = []
    awaitable: Any = task.get_coro()
    while (frame := getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)) is not None:
        frames.append(frame)
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
    return frames


@asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[tuple[FastAPI, str]]:
    """The app and its `host:port`, served in this loop with the run.sh protocols."""
    app = create_app(make_settings(tmp_path))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(server_config(app))
    running = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not running.done(), "the server did not start"
            await asyncio.sleep(0.01)
        yield app, "127.0.0.1:%d" % sock.getsockname()[1]
    finally:
        server.should_exit = True
        await running
        sock.close()


async def test_an_idle_feed_keeps_neither_the_stack_nor_the_handshake(
    tmp_path: Path, mint: Callable[..., str]
) -> None:
    auth = {"Authorization": f"Bearer {mint()}"}
    async with serving(tmp_path) as (_, address):
        async with connect(f"ws://{address}/ws/ai/insights/cust-1", additional_headers=auth) as ws:
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
            async with httpx.AsyncClient(base_url=f"http://{address}", timeout=30, headers=auth) as http:
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
            feed = weakref.ref(next(frame.f_locals["self"] for frame in frames if frame.f_code.co_name == "run"
                                    and frame.f_globals["__name__"] == "app.api.ws_session"))
            del frames, protocol
        # What the ended session leaves goes by reference counting alone, not at some
        # later full collection of everything it held.
        gc.disable()
        try:
            await asyncio.wait_for(session, 10)
            del session
            assert feed() is None, "a reference cycle holds the ended session"
        finally:
            gc.enable()


async def test_a_token_that_expires_while_a_replay_is_sent_ends_the_session(
    tmp_path: Path, mint: Callable[..., str]
) -> None:
    """The client's own messages are handled in the session's coroutine, and a replay it
    asks for (`resume`) can take long to a slow reader: the token's expiry is checked
    before every event sent, not only between messages."""
    async with serving(tmp_path) as (app, address):
        channel = customer_channel("acme", "cust-2")
        for n in range(1_000):  # 50 MB: far more than loopback's socket buffers hold, so the
            # replay goes at the reader's pace once they are full
            await app.state.services.bus.publish(channel, type="insight", tenant_id="acme", customer_id="cust-2",
                                                 data={"summary": f"{n} " + "x" * 50_000})
        async with connect(f"ws://{address}/ws/ai/insights/cust-2", max_size=None,
                           additional_headers={"Authorization": f"Bearer {mint(ttl_s=2)}"}) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(json.dumps({"type": "resume", "last_event_id": "1-0"}))
            replayed, messages = 0, []
            with pytest.raises(ConnectionClosedError):
                async for raw in ws:  # 10 ms per event: the whole replay would take 10 s
                    message = json.loads(raw)
                    messages.append(message["type"])
                    replayed += message["type"] == "insight"
                    await asyncio.sleep(0.01)
        assert ws.close_code == 4401
        assert messages[-1] == "error" and 0 < replayed < 1_000, (replayed, messages[-3:])
