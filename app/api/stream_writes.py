"""Streams write what is ready together: one socket write per burst of events, not per event.

sse-starlette sends each event as its own ASGI message, and each message costs every
send wrapper above it, uvicorn's chunked framing and one `send()` system call: about a
seventh of the server's time at 100 concurrent streams (cProfile, README "Per event"). A provider's tokens arrive in
bursts (several in one network read, more the busier the server is), and so do the
chain's chunks. Here an event is queued, and the request's writer, woken by the first
event queued after a write, waits a short window (`window_s`, the setting
`STREAM_WRITE_WINDOW_MS`) and then sends everything queued as one message: a burst costs
one write, and a queued event waits the window and about three turns of the loop at most
(one to wake the writer, one for the window's timer, one to resume it).

Why a window rather than the loop's next turn: a busy stream makes one event per turn
of the loop (the provider's reader gives the loop a turn every few tokens), so a writer
that wrote at the next turn wrote once per event: 43.5 write calls per stream for the
bench's 400-piece answer at concurrency 100 (strace, every write call of the server). A
5 ms window cut them to 18.3 and a stream's CPU by about 7% (README, "Writes held for a
few milliseconds"). SGLang's and vLLM's `--stream-interval` make the same trade, counted
in tokens; a reader does not see the few milliseconds.

On a busy loop a turn lasts longer than the window, so the turns, not the milliseconds,
are what group the events. A timer opened by the first event instead (the window alone,
then one turn) fired at the next turn and wrote nearly every event on its own: 41 write
calls per stream in the same count, whatever the window (5 or 20 ms).

Until the stream's first data event has gone out, each event is written at once: the
first is what a client waits for, and a turn of a loop busy with other streams is a few
milliseconds (README, "The first event at concurrency 10"). LangServe sends its metadata
event and the first data event in the same turn, so a stream starts with two writes.

The bytes on the wire are the same, in the same order; only their grouping into writes
changes. Backpressure is kept: past `MAX_PENDING_BYTES` the stream waits for its own
write, as it waits for a paused transport. The last message carries what is still
queued, so a stream ends in one write too.

It must sit outside `StreamErrorMiddleware`, which recognises LangServe's error frame
at the start of a message: inside it, that frame could arrive merged behind queued
events.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.middleware import SelectiveMiddleware, is_chain_stream

MAX_PENDING_BYTES = 64 * 1024
_DATA_EVENT = b"event: data"  # how sse-starlette starts LangServe's data events


class CoalescedSend:
    """The `send` a stream's app is given: body messages with more to come are queued and
    written together by a writer task; any other message first writes what is queued."""

    def __init__(self, send: Send, *, window_s: float) -> None:
        self._send = send
        self._window_s = window_s
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._ready = asyncio.Event()
        self._writing = asyncio.Lock()
        self._writer: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None
        self._data_sent = False

    async def __call__(self, message: Message) -> None:
        if self._failed is not None:
            raise self._failed
        if message["type"] != "http.response.body" or not message.get("more_body", False):
            await self._write(message)
            return
        if not self._data_sent:
            self._data_sent = message.get("body", b"").startswith(_DATA_EVENT)
            await self._write(message)
            return
        if body := message.get("body", b""):
            self._pending.append(body)
            self._pending_bytes += len(body)
        if self._pending_bytes >= MAX_PENDING_BYTES:
            await self.flush()
            return
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._write_when_ready())
        self._ready.set()

    def _take_pending(self) -> bytes:
        body = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        return body

    async def _write_when_ready(self) -> None:
        try:
            while True:
                await self._ready.wait()
                if self._window_s:
                    await asyncio.sleep(self._window_s)  # what the stream queues meanwhile joins this write
                self._ready.clear()
                await self.flush()
        except Exception as error:  # noqa: BLE001 - the stream raises it on its next send
            self._failed = error

    async def flush(self) -> None:
        async with self._writing:
            while self._pending:
                await self._send({"type": "http.response.body", "body": self._take_pending(), "more_body": True})

    async def _write(self, message: Message) -> None:
        """Writes what is queued, then `message`; a final body takes the queue with it."""
        async with self._writing:
            if self._pending and message["type"] == "http.response.body":
                message = {**message, "body": self._take_pending() + message.get("body", b"")}
            elif self._pending:
                await self._send({"type": "http.response.body", "body": self._take_pending(), "more_body": True})
            await self._send(message)

    def stop(self) -> None:
        if self._writer is not None:
            self._writer.cancel()


class CoalescedStreamWrites(SelectiveMiddleware):
    def __init__(self, app: ASGIApp, *, window_s: float) -> None:
        super().__init__(app)
        self.window_s = window_s

    def handles(self, scope: Scope) -> bool:
        return is_chain_stream(scope)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        coalesced = CoalescedSend(send, window_s=self.window_s)
        try:
            await self.app(scope, receive, coalesced)
        finally:
            # An app that ends without its final message (the server shutting down, a
            # lost analysis job) leaves an incomplete response, which uvicorn closes: what
            # is still queued, up to a window's events, is dropped rather than waited
            # for, since a client that stopped reading would hold the request (and a
            # server shutting down) forever.
            coalesced.stop()
