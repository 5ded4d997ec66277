"""uvicorn's httptools protocol with the limits it lacks: slow headers, huge headers, bodies
that never end.

uvicorn times out idle keep-alive connections but not a client that opens a connection
and trickles its request line and headers (slowloris: 12 such connections were still
open after 60 s), and httptools reads headers of any size (an 8 MB `Authorization`
header was read in full before its 401). This protocol closes a connection whose
headers do not complete within `HTTP_HEADER_TIMEOUT_S` and answers 431 once they pass
`HTTP_MAX_HEADER_BYTES`. The trailers of a chunked body are headers too (httptools
buffers each whole, uvicorn keeps every one): they are held to the same size. And a
body the app does not read to its end (a GET's, one after a 408 or 413) is discarded by
uvicorn as it comes, with its keep-alive clock stopped at each byte: a body still
unfinished at twice `REQUEST_BODY_TIMEOUT_S` after its headers closes the connection
(the app's own 408 comes first). Use it with

    uvicorn app.server:app --http app.api.http_protocol:GuardedHttpToolsProtocol

(`scripts/run.sh` and the Dockerfile do). Behind a proxy, the proxy's own header
timeout and size limit do the same (see the README).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.core.config import get_settings


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self._header_timeout_s = settings.http_header_timeout_s
        self._body_deadline_s = 2 * settings.request_body_timeout_s
        self._max_header_bytes = settings.http_max_header_bytes
        self._timer: asyncio.TimerHandle | None = None  # the head's clock, then the body's
        self._in_head = True  # reading a request line and headers (or waiting for the next)
        # After a chunk's size line: its data, or (after the last one) the trailers. Counted
        # as a head until the data shows up.
        self._maybe_trailers = False
        self._header_bytes = 0
        self._refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        # httptools buffers a header until it is complete, so a head's size is bounded
        # here: while one is read, the parser is fed at most what is left of its budget at
        # a time. What follows the head in the same read (the body, which many clients
        # write with the headers; the next pipelined request) is not counted against it.
        while (self._in_head or self._maybe_trailers) and data:
            if self._in_head:
                self._arm()  # any byte of a head starts its clock, the blank lines before it too
            room = self._max_header_bytes - self._header_bytes
            if room <= 0:
                self._refuse(b"431 Request Header Fields Too Large")
                return
            piece, data = data[:room], data[room:]
            self._header_bytes += len(piece)
            super().data_received(piece)
            if self._refused or self.transport.is_closing() or self.transport.get_protocol() is not self:
                return  # refused, answered 400, or handed to a WebSocket protocol
        if data:
            super().data_received(data)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that never sends a request line is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        self._in_head = False
        self._header_bytes = 0
        super().on_headers_complete()
        self._timer = self.loop.call_later(self._body_deadline_s, self._body_overdue)

    def on_chunk_header(self) -> None:
        self._maybe_trailers = True
        self._header_bytes = 0

    def on_body(self, body: bytes) -> None:
        self._maybe_trailers = False
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()
        self._maybe_trailers = False
        self._header_bytes = 0
        self._in_head = True  # the next request's head, on a kept-alive or pipelined connection

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = self.loop.call_later(self._header_timeout_s, self._head_overdue)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_overdue(self) -> None:
        self._timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm()  # a response is still going out (a blank line came after its request)
            return
        self._refuse(b"408 Request Timeout")

    def _body_overdue(self) -> None:
        self._timer = None
        self._refused = True
        self.transport.close()

    def _refuse(self, status: bytes) -> None:
        self._disarm()
        self._refused = True
        if not self.transport.is_closing():
            answering = self.cycle is not None and self.cycle.response_started and not self.cycle.response_complete
            if not answering:  # else the status line would land inside an answer
                self.transport.write(b"HTTP/1.1 " + status + b"\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
            self.transport.close()
