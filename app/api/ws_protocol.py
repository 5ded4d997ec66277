"""uvicorn's WebSocket protocol (`websockets-sansio`, what `--ws auto` picks) without the
handshake it keeps for the whole session.

The parsed upgrade request and its 101 response stay referenced until the connection
closes (the request by uvicorn and by the suspended frame of websockets' parser, the
response by uvicorn), though nothing reads them after the handshake. Their header maps
were about 5 of 35 KB per idle session (tracemalloc, 2,000 idle feeds; README, "An idle
feed keeps less"), and a screen holds a feed open for hours. So the request's header map
is emptied as soon as uvicorn has built the response and the scope from it (the scope
has its own copy of the headers, which is what the application reads), and the response
is let go once it is sent. Use it with

    uvicorn app.server:app --ws app.api.ws_protocol:LeanWebSocketsProtocol

(`scripts/run.sh` and the Dockerfile do).
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request


class LeanWebSocketsProtocol(WebSocketsSansIOProtocol):
    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)  # builds the response and the scope from the headers
        event.headers.clear()

    def start_keepalive(self) -> None:
        """Called once, right after the 101 is written: a hook that costs nothing per
        message (a refused handshake closes the connection, and the response with it)."""
        super().start_keepalive()
        self.response = None  # type: ignore[assignment]
