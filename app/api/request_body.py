"""Request bodies at the door: too big is 413, too slow is 408, hostile JSON is 422.

- Size: at once from Content-Length, and while reading for chunked bodies. FastAPI's
  built-in `max_body_size` answers in plain text; these answer `{"detail": ...}` JSON
  like every refusal.
- Time: the whole body must arrive within `REQUEST_BODY_TIMEOUT_S` of the end of the
  headers, so a client trickling a body, or never sending it, cannot hold a request
  open (slow headers are the proxy's and uvicorn's job, see the README).
- JSON (POST/PUT/PATCH): checked once by `app.api.json_body.parse_json` before any
  route or LangServe parses it, because FastAPI parses bodies before dependencies run
  and answers its own RecursionError with a 400. The checked bytes are replayed to the
  app unchanged.
"""

from __future__ import annotations

import asyncio

from fastapi.exceptions import RequestValidationError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response, validation_response
from app.api.middleware import SelectiveMiddleware
from app.api.json_body import parse_json
from app.core.errors import PayloadTooLarge, RequestTimeout

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
PARSED_BODY = "parsed_json_body"  # key in the request state


class RequestBodyMiddleware(SelectiveMiddleware):
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, body_timeout_s: float) -> None:
        super().__init__(app)
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    def handles(self, scope: Scope) -> bool:
        return scope["type"] == "http" and scope["method"] in BODY_METHODS

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            too_large = PayloadTooLarge(f"request body exceeds {self.max_body_bytes} bytes")
            await error_response(too_large)(scope, receive, send)
            return
        try:
            body = await self._read(receive)
        except (PayloadTooLarge, RequestTimeout) as refusal:
            await error_response(refusal)(scope, receive, send)
            return
        content_type = headers.get("content-type", "")
        if body.strip() and (not content_type or "json" in content_type):
            try:
                parsed = parse_json(body)
            except RequestValidationError as invalid:
                await validation_response(list(invalid.errors()))(scope, receive, send)
                return
            scope.setdefault("state", {})[PARSED_BODY] = parsed  # so the guard need not parse again
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        received = 0
        # From the end of the headers, not the body's first byte: a client that declares a
        # body and never starts it would otherwise hold the request open for ever.
        deadline = asyncio.get_running_loop().time() + self.body_timeout_s
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(f"request body not received within {self.body_timeout_s:g} s") from None
            if message["type"] != "http.request":
                raise RequestTimeout("client went away before sending its body")
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_body_bytes:
                raise PayloadTooLarge(f"request body exceeds {self.max_body_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body once, then the real channel (disconnects still reach the app)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
