"""uvicorn's WebSocket protocol (`websockets-sansio`, what `--ws auto` picks) without the
handshake it keeps for the whole session.

The parsed upgrade request and its 101 response stay referenced until the connection
closes (the request by uvicorn and by the suspended frame of websockets' parser, the
response by uvicorn), though nothing reads them after the handshake. Their header maps
were about 4 of 35 KB per idle session (tracemalloc, 2,000 idle feeds; README,
"Fan-out"), and a screen holds a feed open for hours. So once the request is answered
its header map is emptied (the scope has its own copy, which is what the application
reads), and once the response is sent it is let go. Use it with

    uvicorn app.server:app --ws app.api.ws_protocol:LeanWebSocketsProtocol

(`scripts/run.sh` and the Dockerfile do).
"""

from __future__ import annotations

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request


class LeanWebSocketsProtocol(WebSocketsSansIOProtocol):
    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)  # builds the response and the scope from the headers
        event.headers.clear()

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if self.handshake_complete:  # accepted or refused: the response is on the wire
            self.response = None  # type: ignore[assignment]
