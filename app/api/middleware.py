"""The shape our pure ASGI middlewares share: handle some requests, hand the rest on."""

from __future__ import annotations

from collections.abc import Awaitable

from starlette.types import ASGIApp, Receive, Scope, Send


class SelectiveMiddleware:
    """`__call__` is deliberately not a coroutine: a request this layer does not handle
    is returned to the layer above to await directly, so this layer keeps no frame of
    its own alive for it. A coroutine layer would stay alive for a whole WebSocket
    session or stream: at 10,000 idle screens, each such frame adds megabytes. Only for
    the app's middleware stack: given to uvicorn as the app itself, a `__call__` that is
    not a coroutine function would be taken for an ASGI2 application."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if self.handles(scope):
            return self.handle(scope, receive, send)
        return self.app(scope, receive, send)

    def handles(self, scope: Scope) -> bool:
        raise NotImplementedError

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


# The SSE feeds (`app.api.streaming`) end in a customer id, which may be "stream".
FEED_PATHS = "/api/v1/ai/stream/"


def is_chain_stream(scope: Scope) -> bool:
    """A chain's `stream`, `stream_log` or `stream_events` request."""
    if scope["type"] != "http":
        return False
    path: str = scope["path"]
    return path.endswith(("/stream", "/stream_log", "/stream_events")) and not path.startswith(FEED_PATHS)
