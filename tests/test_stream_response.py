"""The chains' event streams run in the request's task (`app.api.stream_response`) and end
as sse-starlette's own response ends them: a client leaving cancels the stream, an error
is raised in the same group, a CancelledError the stream did not get from its task ends
the response quietly. Each case runs against sse-starlette's class too, as the reference.
(That the chains' routes use it: `tests/test_stream_writes.py`.)"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sse_starlette.sse import AppStatus, EventSourceResponse
from starlette.types import Message

from app.api.stream_response import StreamInRequestTask

Stream = Callable[[list[str]], AsyncIterator[dict[str, str]]]


async def waits_after_one_event(log: list[str]) -> AsyncIterator[dict[str, str]]:
    log.append("started")
    try:
        yield {"event": "data", "data": "1"}
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        log.append("cancelled")
        raise


async def fails_after_one_event(log: list[str]) -> AsyncIterator[dict[str, str]]:
    yield {"event": "data", "data": "1"}
    raise ValueError("boom")


async def awaits_a_cancelled_future(log: list[str]) -> AsyncIterator[dict[str, str]]:
    yield {"event": "data", "data": "1"}
    dropped = asyncio.get_running_loop().create_future()
    dropped.cancel()  # as the CPU pool drops a queued job at shutdown
    try:
        await dropped
    finally:
        log.append("ended")


async def stays() -> Message:
    """A client that stays to the end (as `receive`)."""
    await asyncio.sleep(60)
    raise AssertionError("the response outlived its stream")


async def ignored(message: Message) -> None:
    """A `send` whose bodies no test reads."""


async def respond(response_class: type[EventSourceResponse], stream: Stream, *, leave_after_s: float | None,
                  ping_s: float | None = None) -> tuple[str, list[str], list[bytes]]:
    """(how the response ended, what the stream logged, the bodies sent); `ping_s`, the
    ping interval (None: sse-starlette's default)."""
    # sse-starlette keeps one shutdown event per process, bound to the loop that made it;
    # each test has a loop of its own.
    AppStatus.should_exit_event = None
    log: list[str] = []
    sent: list[bytes] = []

    async def receive() -> Message:
        if leave_after_s is not None:
            await asyncio.sleep(leave_after_s)
            return {"type": "http.disconnect"}
        return await stays()

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            sent.append(message.get("body", b""))

    try:
        await asyncio.wait_for(response_class(stream(log), ping=ping_s)({"type": "http"}, receive, send), 5)
        ended = "returned"
    except BaseExceptionGroup as group:
        ended = "raised " + ", ".join(type(error).__name__ for error in group.exceptions)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0, "a cancellation was left on the caller's task"
    return ended, log, sent


@pytest.mark.parametrize("response_class", [EventSourceResponse, StreamInRequestTask])
@pytest.mark.parametrize(("stream", "leave_after_s", "ended", "logged"), [
    (waits_after_one_event, 0.0, "returned", ["started", "cancelled"]),  # the client is gone at once
    (waits_after_one_event, 0.05, "returned", ["started", "cancelled"]),  # it leaves mid-stream
    (fails_after_one_event, None, "raised ValueError", []),
    (awaits_a_cancelled_future, None, "returned", ["ended"]),
])
async def test_a_stream_ends_as_sse_starlettes_own_response_ends_it(
        response_class: type[EventSourceResponse], stream: Stream, leave_after_s: float | None, ended: str,
        logged: list[str]) -> None:
    how, log, sent = await respond(response_class, stream, leave_after_s=leave_after_s)
    assert (how, log) == (ended, logged)
    if leave_after_s != 0.0:
        assert sent[0].startswith(b"event: data"), sent


async def two_events_apart(log: list[str]) -> AsyncIterator[dict[str, str]]:
    log.append("started")
    try:
        yield {"event": "data", "data": "1"}
        await asyncio.sleep(0.25)
        yield {"event": "data", "data": "2"}
    except asyncio.CancelledError:
        log.append("cancelled")
        raise


@pytest.mark.parametrize("response_class", [EventSourceResponse, StreamInRequestTask])
@pytest.mark.parametrize(("ping_s", "pinged"), [(0.06, True), (5.0, False)])
async def test_a_stream_is_pinged_every_interval_while_it_runs(
        response_class: type[EventSourceResponse], ping_s: float, pinged: bool) -> None:
    ended, _, sent = await respond(response_class, two_events_apart, leave_after_s=None, ping_s=ping_s)
    assert ended == "returned"
    pings = [body for body in sent if body.startswith(b": ping - ")]
    data = [body for body in sent if body.startswith(b"event: data")]
    assert len(data) == 2
    if pinged:
        # 0.25 s at 0.06 s: 4 intervals; a loaded machine may fire a timer late, not early.
        assert 2 <= len(pings) <= 4, sent
        assert sent.index(pings[0]) > sent.index(data[0]) and sent.index(pings[-1]) < sent.index(data[1])
    else:
        assert pings == []


@pytest.mark.parametrize("response_class", [EventSourceResponse, StreamInRequestTask])
async def test_the_servers_exit_ends_running_streams_and_new_ones_at_once(
        response_class: type[EventSourceResponse]) -> None:
    AppStatus.should_exit_event = None
    running: list[str] = []
    response = asyncio.ensure_future(response_class(waits_after_one_event(running))({"type": "http"}, stays, ignored))
    await asyncio.sleep(0.05)
    try:
        AppStatus.should_exit = True  # what uvicorn's exit handler, as sse-starlette patches it, does
        assert AppStatus.should_exit_event is not None
        AppStatus.should_exit_event.set()
        await asyncio.wait_for(response, 5)
        assert running == ["started", "cancelled"]
        late: list[str] = []
        await asyncio.wait_for(response_class(waits_after_one_event(late))({"type": "http"}, stays, ignored), 5)
        assert late in (["started", "cancelled"], [])  # cancelled at its first wait, or before it began
    finally:
        AppStatus.should_exit = False
        AppStatus.should_exit_event = None


async def test_a_chain_stream_has_one_helper_task_the_disconnect_listener() -> None:
    """sse-starlette gives each stream three (disconnect, pings, exit); the pings run on a
    timer here and one watcher per loop serves every stream's exit."""
    AppStatus.should_exit_event = None
    loop = asyncio.get_running_loop()
    started: list[str] = []
    default = loop.get_task_factory()

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        started.append(getattr(coro, "__qualname__", repr(coro)))
        return default(loop, coro, **kwargs) if default else asyncio.Task(coro, loop=loop, **kwargs)

    await StreamInRequestTask(two_events_apart([]))({"type": "http"}, stays, ignored)  # the loop's watcher starts
    loop.set_task_factory(counting)
    try:
        for _ in range(3):
            await StreamInRequestTask(two_events_apart([]))({"type": "http"}, stays, ignored)
    finally:
        loop.set_task_factory(default)
    assert len(started) == 3, started


class _Marker:
    """An object a request's context holds."""


_REQUEST_VALUE: contextvars.ContextVar[_Marker] = contextvars.ContextVar("request_value")


def test_the_exit_watcher_holds_neither_a_requests_context_nor_a_closed_loop() -> None:
    """The loop's exit watcher lives as long as its loop: it must not keep the first
    stream's context (request ids, the tracing context), and a loop that closes is let go."""
    AppStatus.should_exit_event = None
    held: list[weakref.ref[Any]] = []

    async def first_request() -> None:
        marker = _Marker()
        held.append(weakref.ref(marker))
        held.append(weakref.ref(asyncio.get_running_loop()))
        _REQUEST_VALUE.set(marker)
        await StreamInRequestTask(two_events_apart([]))({"type": "http"}, stays, ignored)

    try:
        asyncio.run(first_request())
    finally:
        AppStatus.should_exit_event = None
    gc.collect()
    assert [ref() for ref in held] == [None, None]
