"""A real uvicorn server on a free loopback port, in a background thread.

Real HTTP (not ASGITransport, which buffers bodies) is what proves streaming.
sse-starlette 1.x keeps a process-global exit event bound to the first server's
loop; it is reset before each server so several can run in one test session.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from sse_starlette.sse import AppStatus
from starlette.types import ASGIApp

from app.api.ws_protocol import LeanWebSocketsProtocol


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_config(app: ASGIApp, **options: Any) -> uvicorn.Config:
    """uvicorn as the tests run it, with the WebSocket protocol and settings the service
    runs with (scripts/run.sh): the lean protocol, compression off, frames up to 1 MiB."""
    options = {"ws_per_message_deflate": False, "ws_max_size": 1_048_576, **options}
    return uvicorn.Config(app, log_level="warning", lifespan="on", ws=LeanWebSocketsProtocol, **options)


@contextmanager
def live_server(app: ASGIApp, *, startup_timeout_s: float = 30.0) -> Iterator[str]:
    AppStatus.should_exit_event = None
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(server_config(app))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        AppStatus.should_exit_event = None
