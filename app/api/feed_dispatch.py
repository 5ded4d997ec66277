"""The long-lived WebSocket feeds, handed from the outermost user middleware straight to
their endpoint.

An idle screen holds its feed open for hours, and every layer a session passes through
keeps a coroutine frame alive for all of it. Under the outermost user middleware that is
FastAPI's exception and exit-stack middlewares, the router and the route's own exception
wrapper: about 7 of 30 KB per idle session (tracemalloc, 2,000 idle feeds), and none of
them does anything for these sessions. The endpoint authenticates, checks its policy and
answers the refusals with close codes, recording them itself. (The layers above, FastAPI's
error, telemetry and body-limit middlewares and the tracing middleware when on, still
see every feed.)

The feeds are given by name (`app.api.streaming.FEEDS`) and matched on their own paths,
which no other route shares (their router is included without a prefix: with one, the
feeds would also answer here at their bare paths). The router keeps them too, so
`app.routes` lists them for the access-policy walk, and a feed added to the router alone
is still served, by it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

from starlette.routing import Match, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket


class FeedRoute(WebSocketRoute):
    """A WebSocket route served by `FeedSockets`: its endpoint handles its own errors."""


class FeedSockets:
    """`__call__` is not a coroutine, as in `app.api.middleware.SelectiveMiddleware`: the
    endpoint's coroutine goes to the layer above to await, with no frame of ours between."""

    def __init__(self, app: ASGIApp, feeds: Sequence[FeedRoute]) -> None:
        self.app = app
        self.feeds = feeds

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] == "websocket":
            for feed in self.feeds:
                match, child_scope = feed.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)
                    return feed.endpoint(WebSocket(scope, receive, send))
        return self.app(scope, receive, send)
