"""LangServe's event streams, run in the request's own task, with one helper task each.

sse-starlette's `EventSourceResponse` (1.8.2, pinned: LangServe 0.3 needs sse-starlette
below 2) starts the stream in a task of its own and keeps the request's task listening
for the client to leave. A new task first runs at the event loop's next turn, and with
other streams busy a turn is a few milliseconds: every stream's first event waited for
one (README, "The first event at concurrency 10"). Here the request's task runs the
stream at once, and one spawned task listens for the client leaving.

sse-starlette also gives every stream a task sending pings and a task waiting for the
server's exit, both cancelled when the stream ends. Each cost a task, anyio's bookkeeping,
a cancellation and the cyclic garbage it leaves (anyio keeps the CancelledError in a local
of the frame its traceback holds): about 0.17 ms of CPU per stream at concurrency 100
(README, "Two tasks fewer per stream"). Here a timer sends the pings (a task only for the
moment of a ping: a stream shorter than the interval never has one) and one watcher per
event loop cancels every running stream when the server exits. Whichever ends first still
cancels the rest, and an error, a ping's included, is raised the same way (anyio's task
group gathers the host's errors with its children's).

LangServe builds its responses itself, so the chains' routes get a route class that
swaps the class of the response it returns: the subclass adds no state.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from typing import Any

import anyio
import sniffio
from anyio.abc import TaskGroup
from fastapi import Request, Response
from fastapi.routing import APIRoute
from sse_starlette.sse import AppStatus, EventSourceResponse, ServerSentEvent, ensure_bytes
from starlette.types import Receive, Scope, Send

log = logging.getLogger(__name__)


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
            if self.data_sender_callable:
                task_group.start_soon(self.data_sender_callable)
            with _server_exit().cancels(task_group.cancel_scope), self._pinging(task_group, send):
                await stream()

        if self.background is not None:
            await self.background()

    @contextmanager
    def _pinging(self, task_group: TaskGroup, send: Send) -> Iterator[None]:
        """sse-starlette's `_ping` on a timer: an interval after the last ping was sent (or
        the stream began), a task of the group sends the next one, so a ping's error fails
        the response as the ping task's did, and pings never pile up behind a slow send."""
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None
        running = True

        def arm() -> None:
            nonlocal timer
            if running and self.active:
                timer = loop.call_later(self.ping_interval, due)

        def due() -> None:
            # A loop callback has no task for anyio to find its backend by: named here
            # (sniffio's documented override).
            named = sniffio.current_async_library_cvar.set("asyncio")
            try:
                task_group.start_soon(self._send_ping, send, arm)
            finally:
                sniffio.current_async_library_cvar.reset(named)

        arm()
        try:
            yield
        finally:
            running = False
            if timer is not None:
                timer.cancel()

    async def _send_ping(self, send: Send, then: Callable[[], None]) -> None:
        """One ping, as sse-starlette 1.8.2's `_ping` writes each; `then` when it is sent."""
        ping = (
            ServerSentEvent(comment=f"ping - {datetime.utcnow()}").encode()
            if self.ping_message_factory is None
            else ensure_bytes(self.ping_message_factory(), self.sep)
        )
        async with self._send_lock:
            if self.active:
                await send({"type": "http.response.body", "body": ping, "more_body": True})
        then()


class _ServerExit:
    """Cancels every stream of its event loop still running when the server exits
    (sse-starlette's `listen_for_exit_signal`: uvicorn's exit handler, patched).

    If the watch fails (sse-starlette keeps one exit event per process, bound to the loop
    that first waited on it: a second loop cannot wait on it), it is logged once and that
    loop's streams end with their clients, not with the exit; sse-starlette's own response
    fails every stream then."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._running: set[anyio.CancelScope] = set()
        # In a context of its own, the callback too: not the first stream's, held for the
        # loop's lifetime. The task is held here while it runs (the loop holds it weakly).
        empty = contextvars.Context()
        self._watcher: asyncio.Task[None] | None = loop.create_task(self._watch(), context=empty)
        self._watcher.add_done_callback(self._ended, context=empty)

    async def _watch(self) -> None:
        await EventSourceResponse.listen_for_exit_signal()
        for scope in list(self._running):
            scope.cancel()

    def _ended(self, watcher: asyncio.Task[None]) -> None:
        self._watcher = None
        if watcher.cancelled():  # the loop is closing: it is let go
            loop = watcher.get_loop()
            if _exits.get(loop) is self:
                del _exits[loop]
        elif (error := watcher.exception()) is not None:
            log.warning("cannot watch for the server's exit on this event loop (%r): its streams end "
                        "with their clients", error)

    @contextmanager
    def cancels(self, scope: anyio.CancelScope) -> Iterator[None]:
        if AppStatus.should_exit:
            scope.cancel()  # already exiting: the stream ends at its first wait, as before
        self._running.add(scope)
        try:
            yield
        finally:
            self._running.discard(scope)


_exits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _ServerExit] = weakref.WeakKeyDictionary()


def _server_exit() -> _ServerExit:
    loop = asyncio.get_running_loop()
    watch = _exits.get(loop)
    if watch is None:
        watch = _exits[loop] = _ServerExit(loop)
    return watch


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
