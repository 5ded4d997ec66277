"""A stream writes what is ready together, holds an event for a short window at most, and keeps
backpressure.

The server below is the whole service with one outer layer that records every body
message uvicorn is asked to write.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from app.api.chains import INTERACTIONS_PATH
from app.api.stream_writes import MAX_PENDING_BYTES, CoalescedSend, CoalescedStreamWrites
from app.core.config import Settings
from app.server import create_app
from tests.support.fake_openai import FakeOpenAI
from tests.support.live_server import live_server
from tests.support.payloads import INTERACTION
from tests.test_chains_http import check_interaction, merge_chunks, sse_events


@pytest.fixture(scope="module")
def served(service_settings: Settings) -> Iterator[tuple[str, list[bytes], list[bool]]]:
    """The app's URL, every body it wrote, and for each whether the request's own task
    wrote it."""
    writes: list[bytes] = []
    by_request_task: list[bool] = []
    app = create_app(service_settings)

    async def recording(scope: Scope, receive: Receive, send: Send) -> None:
        request_task = asyncio.current_task()

        async def recorded(message: Message) -> None:
            if message["type"] == "http.response.body":
                writes.append(message.get("body", b""))
                by_request_task.append(asyncio.current_task() is request_task)
            await send(message)

        await app(scope, receive, recorded)

    with live_server(recording) as url:
        yield url, writes, by_request_task


def test_events_ready_together_go_out_in_one_write_and_still_parse_whole(
    served: tuple[str, list[bytes], list[bool]], mint: Callable[..., str], openai_provider: FakeOpenAI
) -> None:
    url, writes, by_request_task = served
    writes.clear()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {mint()}"}, timeout=30) as client, \
            client.stream("POST", f"{INTERACTIONS_PATH}/stream", json={"input": INTERACTION}) as response:
        received = b"".join(response.iter_bytes())
    events = sse_events(received.decode())
    assert events[0][0] == "metadata" and events[-1][0] == "end"
    check_interaction(merge_chunks([json.loads(data) for name, data in events if name == "data"]))
    assert len(writes) < len(events)
    # LangServe's metadata event and the first data event are written as they come; the
    # chain's closing chunks (lists, actions, flags) are ready at once.
    assert writes[0].startswith(b"event: metadata") and writes[0].count(b"event: ") == 1
    assert writes[1].startswith(b"event: data") and writes[1].count(b"event: ") == 1
    assert max(write.count(b"event: ") for write in writes[2:]) >= 3, writes
    # The stream runs in the request's own task (`app.api.stream_response`), not one that
    # would first run at the loop's next turn: the first events are written from it.
    assert by_request_task[:2] == [True, True]


def test_an_event_goes_out_while_the_provider_is_still_silent(
    served: tuple[str, list[bytes], list[bool]], mint: Callable[..., str], openai_provider: FakeOpenAI
) -> None:
    """The provider sends its first token (the labels), then nothing until the test has
    read the labels' event: that event must arrive while the provider is silent, held
    for company no longer than the write window."""
    url, _, _ = served
    openai_provider.mode = "hold_after_first"
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {mint()}"}, timeout=10) as client, \
                client.stream("POST", f"{INTERACTIONS_PATH}/stream", json={"input": INTERACTION}) as response:
            text, pieces = "", response.iter_text()
            while not any('"provisional":false' in data.replace(" ", "") for _, data in sse_events(text)):
                text += next(pieces)
            events = sse_events(text)
            assert '"provisional":false' in events[-1][1].replace(" ", ""), "nothing came after the labels yet"
            assert not openai_provider.resume.is_set()
            openai_provider.resume.set()
            text += "".join(pieces)
    finally:
        openai_provider.resume.set()
    assert sse_events(text)[-1][0] == "end"


async def test_events_up_to_the_first_data_event_go_out_at_once_later_ones_together() -> None:
    """The first data event is what a client waits for: it is written in the stream's own
    turn, not the writer's next one (a few milliseconds on a loop busy with other streams)."""
    written: list[bytes] = []

    async def transport(message: Message) -> None:
        written.append(message.get("body", b""))

    send = CoalescedSend(transport, window_s=0)
    metadata, first, second, third = (b"event: metadata\r\ndata: {}\r\n\r\n", b"event: data\r\ndata: 1\r\n\r\n",
                                      b"event: data\r\ndata: 2\r\n\r\n", b"event: data\r\ndata: 3\r\n\r\n")
    for event in (metadata, first, second, third):
        await send({"type": "http.response.body", "body": event, "more_body": True})
    assert written == [metadata, first], "the first data event waited for the writer"
    await asyncio.sleep(0)  # the stream waits: what it queued goes out in one write
    await asyncio.sleep(0)
    assert written == [metadata, first, second + third]
    send.stop()


async def test_the_window_opens_with_the_first_queued_event_and_holds_none_past_it(service_settings: Settings) -> None:
    """The window (`STREAM_WRITE_WINDOW_MS`) holds a ready event for company while the
    stream waits for its provider. It opens as the writer wakes for the first event queued
    after a write, so a stream that keeps sending is still written every window, and what
    it held goes out when it closes, with nothing more sent."""
    written: list[bytes] = []

    async def transport(message: Message) -> None:
        written.append(message.get("body", b""))

    app = create_app(service_settings.model_copy(update={"stream_write_window_ms": 100}))
    (layer,) = [m for m in app.user_middleware if m.cls is CoalescedStreamWrites]
    window_s = layer.kwargs["window_s"] * 10  # the app's own wiring (0.1 s), stretched for a shared machine
    send = CoalescedSend(transport, window_s=window_s)
    events = [b"event: metadata\r\ndata: {}\r\n\r\n",
              *(f"event: data\r\ndata: {n}\r\n\r\n".encode() for n in range(4))]
    metadata, first, second, third, fourth = events

    async def queue(event: bytes) -> None:
        await send({"type": "http.response.body", "body": event, "more_body": True})

    for event in (metadata, first, second):
        await queue(event)
    for _ in range(5):  # the stream waits for its provider: a turn would have been enough before
        await asyncio.sleep(0)
    assert written == [metadata, first], "an event went out before the window closed"
    await asyncio.sleep(window_s / 2)
    await queue(third)  # inside the window the second opened
    await asyncio.sleep(window_s * 3 / 4)  # past it; a window restarted by the third would still be open
    assert written == [metadata, first, second + third], "the window did not close on time"
    await queue(fourth)
    for _ in range(100):  # then nothing more comes: the window alone sends what is held
        if len(written) == 4:
            break
        await asyncio.sleep(0.05)
    assert written == [metadata, first, second + third, fourth]
    send.stop()


async def test_a_stream_waits_for_its_own_write_once_enough_is_queued() -> None:
    """A client that reads slowly pauses the transport; the stream must wait, not queue
    without bound."""
    transport_open = asyncio.Event()
    written: list[bytes] = []

    async def paused_transport(message: Message) -> None:
        written.append(message.get("body", b""))
        await transport_open.wait()

    send = CoalescedSend(paused_transport, window_s=0)
    piece = b"x" * (MAX_PENDING_BYTES // 4)

    sent = 0

    async def stream() -> None:
        nonlocal sent
        for _ in range(12):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            sent += 1
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    producer = asyncio.ensure_future(stream())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not producer.done() and sent <= 5, f"the stream ran {sent} pieces ahead of a paused transport"
    transport_open.set()
    await asyncio.wait_for(producer, 5)
    send.stop()
    assert b"".join(written) == piece * 12


async def test_every_byte_goes_out_once_in_order_however_the_stream_yields() -> None:
    written: list[Message] = []

    async def transport(message: Message) -> None:
        written.append(message)

    send = CoalescedSend(transport, window_s=0)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    events = [f"event: data\r\ndata: {n}\r\n\r\n".encode() for n in range(200)]
    for n, event in enumerate(events):
        await send({"type": "http.response.body", "body": event, "more_body": True})
        if n % 7 == 0:  # the stream waits for its provider now and then
            await asyncio.sleep(0)
    await send({"type": "http.response.body", "body": b"event: end\r\n\r\n", "more_body": False})
    send.stop()
    assert written[0]["type"] == "http.response.start"
    bodies = written[1:]
    assert b"".join(m["body"] for m in bodies) == b"".join(events) + b"event: end\r\n\r\n"
    assert [m["more_body"] for m in bodies] == [True] * (len(bodies) - 1) + [False]
    assert 1 < len(bodies) < len(events) / 2


async def test_a_failed_write_fails_the_stream_at_its_next_send() -> None:
    writes = 0

    async def broken_transport(message: Message) -> None:
        nonlocal writes
        writes += 1
        if writes > 1:
            raise OSError("connection reset")

    send = CoalescedSend(broken_transport, window_s=0)
    await send({"type": "http.response.body", "body": b"event: data\r\n\r\n", "more_body": True})  # at once
    await send({"type": "http.response.body", "body": b"event: data\r\n\r\n", "more_body": True})
    await asyncio.sleep(0)  # the writer tries, and fails
    await asyncio.sleep(0)
    with pytest.raises(OSError, match="connection reset"):
        await send({"type": "http.response.body", "body": b"event: data\r\n\r\n", "more_body": True})
    send.stop()
