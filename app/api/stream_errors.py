"""Ends a failed LangServe stream with a structured `error` event and `end`.

LangServe 0.3.3 sends `{"status_code": 500, "message": "Internal Server Error"}` for
every mid-stream failure, then re-raises, which tears the connection down before the
chunked body is complete (langserve#414): clients cannot tell an outage from a bug and
some see a network error instead. This middleware holds LangServe's error frame back,
waits for the exception behind it, and sends in its place one frame with `code`,
`message`, `retryable` (plus LangServe's `status_code`, so RemoteRunnable still
raises), then `event: end`, then closes the body cleanly.
"""

from __future__ import annotations

import json
import logging

from starlette.types import Message, Receive, Scope, Send

from app.api.errors import error_payload
from app.api.middleware import SelectiveMiddleware, is_chain_stream

log = logging.getLogger(__name__)

_ERROR_FRAME = b"event: error"
_SEP = b"\r\n"


def sse_frame(event: str, data: object | None = None) -> bytes:
    lines = [f"event: {event}".encode()]
    if data is not None:
        lines.append(b"data: " + json.dumps(data).encode())
    return _SEP.join(lines) + _SEP + _SEP


def leaf_exception(error: BaseException) -> BaseException:
    """anyio task groups wrap the chain's exception in (nested) exception groups."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


class StreamErrorMiddleware(SelectiveMiddleware):
    def handles(self, scope: Scope) -> bool:
        return is_chain_stream(scope)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        held_error = False
        finished = False

        async def guarded_send(message: Message) -> None:
            nonlocal held_error
            if held_error or finished:
                return  # the app has failed; only our closing frames go out now
            if message["type"] == "http.response.body" and message.get("body", b"").startswith(_ERROR_FRAME):
                held_error = True
                return
            await send(message)

        try:
            await self.app(scope, receive, guarded_send)
        except BaseException as raised:
            error = leaf_exception(raised)
            if not held_error:
                raise
            log.warning("stream failed: %r", error, exc_info=error)
            finished = True
            body = sse_frame("error", error_payload(error)) + sse_frame("end")
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        if held_error:  # the app swallowed its own error: still close with a clear event
            body = sse_frame("error", error_payload(RuntimeError())) + sse_frame("end")
            await send({"type": "http.response.body", "body": body, "more_body": False})
