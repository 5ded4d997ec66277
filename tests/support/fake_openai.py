"""An OpenAI-compatible chat server that streams slowly or fails on demand.

It speaks the real wire format (SSE `chat.completion.chunk` events, `[DONE]`, usage),
so tests exercise the real `langchain-openai` client and its error handling.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

Mode = Literal["ok", "error_500", "error_401", "fail_midstream", "hang", "stall_after_first", "hold_after_first",
               "rate_limited"]


ANALYSIS_REPLY = json.dumps({
    "sentiment": {"label": "negative", "score": -0.8},
    "intent": "cancellation_risk",
    "urgency": "high",
    "confidence": {"sentiment": 0.9, "intent": 0.85, "urgency": 0.8},
    "pain_points": ["third outage this week"],
    "preferences": ["a fix today"],
    "summary": "The customer threatens to cancel after a third outage this week unless it is fixed today.",
    "next_best_actions": [
        {"action": "call_with_fix_plan", "description": "Call today with a concrete fix plan and an SLA credit.",
         "priority": "high", "confidence": 0.9, "estimated_impact": 0.9,
         "next_steps": ["Call within the hour", "Share the incident report"], "reason": "churn threat with a deadline today"},
        {"action": "escalate_to_manager", "description": "Escalate to the account manager.",
         "priority": "high", "confidence": 0.7, "estimated_impact": 0.8, "next_steps": ["Assign an owner"],
         "reason": "repeated outages"},
    ],
})


SUMMARY_KEY = '"summary": "'


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [word + (" " if i < len(words) - 1 else "") for i, word in enumerate(words)]


def _halves(piece: str) -> list[str]:
    """The piece cut inside each character outside the BMP, each half a lone surrogate
    (which `json.dumps` sends as its `\\udXXX` escape)."""
    out, current = [], ""
    for char in piece:
        if ord(char) > 0xFFFF:
            offset = ord(char) - 0x10000
            out.append(current + chr(0xD800 + (offset >> 10)))
            current = chr(0xDC00 + (offset & 0x3FF))
        else:
            current += char
    return [*out, current] if current else out


@dataclass
class FakeOpenAI:
    """Streams `reply`, or `json_reply` to requests in JSON mode (the analysis)."""

    mode: Mode = "ok"
    reply: str = "The customer wants a faster resolution and is frustrated with repeated outages."
    json_reply: str = ANALYSIS_REPLY
    token_delay_s: float = 0.0
    fail_after_tokens: int = 3
    requests: list[dict[str, object]] = field(default_factory=list)
    request_times: list[float] = field(default_factory=list)  # time.monotonic() of each request
    streams_abandoned: int = 0  # the client went away mid-stream
    retry_after: str = "1"  # the Retry-After header of a 429
    rate_limited_requests: int = 1  # "rate_limited": this many 429s, then answers normally
    resume: threading.Event = field(default_factory=threading.Event)  # "hold_after_first" waits for it
    split_astral: bool = False  # each character outside the BMP sent as two halves, as UTF-16 slicing does
    burst: bool = False  # the whole answer in one network write, as it comes to a reader that is late

    def tokens(self, json_mode: bool = False) -> list[str]:
        """Word by word; in JSON mode the structure before and after the summary comes in
        one piece each (a run costs about as many tokens as a plain reply, so the same
        per-token delay paces both) and the summary word by word."""
        if not json_mode:
            return _words(self.reply)
        opening = self.json_reply.find(SUMMARY_KEY)
        if opening < 0:
            return _words(self.json_reply)
        start = opening + len(SUMMARY_KEY)
        end = self.json_reply.find('"', start)
        end = len(self.json_reply) if end < 0 else end
        pieces = [self.json_reply[:start], *_words(self.json_reply[start:end]), self.json_reply[end:]]
        return [half for piece in pieces if piece for half in (_halves(piece) if self.split_astral else [piece])]

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions", self.completions, methods=["POST"])])

    async def completions(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        self.request_times.append(time.monotonic())
        if self.mode == "rate_limited" and len(self.requests) <= self.rate_limited_requests:
            return JSONResponse({"error": {"message": "slow down", "type": "rate_limit_error"}}, 429,
                                headers={"Retry-After": self.retry_after})
        if self.mode == "error_500":
            return JSONResponse({"error": {"message": "upstream exploded", "type": "server_error"}}, 500)
        if self.mode == "error_401":
            return JSONResponse({"error": {"message": "bad key", "type": "invalid_request_error"}}, 401)
        if self.mode == "hang":
            await asyncio.sleep(3600)
        model = body.get("model", "fake")
        json_mode = (body.get("response_format") or {}).get("type") == "json_object"
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                    "model": model,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": self.reply}}],
                    "usage": {"prompt_tokens": 12, "completion_tokens": len(self.tokens()),
                              "total_tokens": 12 + len(self.tokens())},
                }
            )
        return StreamingResponse(self._stream(model, json_mode), media_type="text/event-stream")

    async def _stream(self, model: str, json_mode: bool) -> AsyncIterator[bytes]:
        def event(payload: dict[str, object]) -> bytes:
            return f"data: {json.dumps(payload)}\n\n".encode()

        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": model}
        yield event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                          "finish_reason": None}]})
        tokens = self.tokens(json_mode)
        if self.burst:
            yield b"".join([*(event({**base, "choices": [{"index": 0, "delta": {"content": token},
                                                           "finish_reason": None}]}) for token in tokens),
                            event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
                            b"data: [DONE]\n\n"])
            return
        try:
            for index, token in enumerate(tokens):
                if self.mode == "fail_midstream" and index == self.fail_after_tokens:
                    raise ConnectionResetError("fake provider dropped the connection mid-stream")
                if self.mode == "stall_after_first" and index == 1:
                    await asyncio.sleep(3600)
                if self.mode == "hold_after_first" and index == 1:
                    await asyncio.to_thread(self.resume.wait, 30)
                if self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s)
                yield event({**base, "choices": [{"index": 0, "delta": {"content": token},
                                                  "finish_reason": None}]})
        except (asyncio.CancelledError, GeneratorExit):
            self.streams_abandoned += 1
            raise
        yield event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        yield event({**base, "choices": [], "usage": {"prompt_tokens": 12,
                     "completion_tokens": len(tokens), "total_tokens": 12 + len(tokens)}})
        yield b"data: [DONE]\n\n"
