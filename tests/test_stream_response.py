"""The chains' event streams run in the request's task (`app.api.stream_response`) and end
as sse-starlette's own response ends them: a client leaving cancels the stream, an error
is raised in the same group, a CancelledError the stream did not get from its task ends
the response quietly. Each case runs against sse-starlette's class too, as the reference.
(That the chains' routes use it: `tests/test_stream_writes.py`.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

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


async def respond(response_class: type[EventSourceResponse], stream: Stream, *,
                  leave_after_s: float | None) -> tuple[str, list[str], list[bytes]]:
    """(how the response ended, what the stream logged, the bodies sent)."""
    # sse-starlette keeps one shutdown event per process, bound to the loop that made it;
    # each test has a loop of its own.
    AppStatus.should_exit_event = None
    log: list[str] = []
    sent: list[bytes] = []

    async def receive() -> Message:
        if leave_after_s is not None:
            await asyncio.sleep(leave_after_s)
            return {"type": "http.disconnect"}
        await asyncio.sleep(60)
        raise AssertionError("the response outlived its stream")

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            sent.append(message.get("body", b""))

    try:
        await asyncio.wait_for(response_class(stream(log))({"type": "http"}, receive, send), 5)
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
