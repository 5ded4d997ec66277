"""LangServe's event streams, run in the request's own task.

sse-starlette's `EventSourceResponse` (1.8.2, pinned: LangServe 0.3 needs sse-starlette
below 2) starts the stream in a task of its own and keeps the request's task listening
for the client to leave. A new task first runs at the event loop's next turn, and with
other streams busy a turn is a few milliseconds: every stream's first event waited for
one (README, "The first event at concurrency 10"). Here the two swap: the request's task
runs the stream at once, and spawned tasks listen for the client leaving, send the pings
and watch for shutdown. Whichever ends first still cancels the rest, and an error is
raised the same way (anyio's task group gathers the host's errors with its children's).

LangServe builds its responses itself, so the chains' routes get a route class that
swaps the class of the response it returns: the subclass adds no state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any

import anyio
from fastapi import Request, Response
from fastapi.routing import APIRoute
from sse_starlette.sse import EventSourceResponse
from starlette.types import Receive, Scope, Send


class StreamInRequestTask(EventSourceResponse):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as task_group:
            async def wrap(func: Callable[[], Awaitable[None]]) -> None:
                await func()
                task_group.cancel_scope.cancel()

            async def stream() -> None:
                try:
                    await self.stream_response(send)
                except asyncio.CancelledError:
                    # The request's task was cancelled (the client left, shutdown): on up.
                    # Otherwise the stream awaited something cancelled under it (a job
                    # the CPU pool dropped at shutdown): as a task of its own that ended
                    # the response quietly, and so it does here.
                    task = asyncio.current_task()
                    if task is None or task.cancelling():
                        raise
                task_group.cancel_scope.cancel()

            task_group.start_soon(wrap, partial(self.listen_for_disconnect, receive))
            task_group.start_soon(wrap, partial(self._ping, send))
            task_group.start_soon(wrap, self.listen_for_exit_signal)
            if self.data_sender_callable:
                task_group.start_soon(self.data_sender_callable)
            await stream()

        if self.background is not None:
            await self.background()


class ChainRoute(APIRoute):
    """The route class of the chains' LangServe endpoints (`app.api.chains`)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            response = await handler(request)
            if type(response) is EventSourceResponse:
                response.__class__ = StreamInRequestTask
            return response

        return handle
