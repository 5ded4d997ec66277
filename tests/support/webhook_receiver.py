"""An alert webhook receiver as an operator would write one: it verifies the signature
and the timestamp, and can be told to fail its first deliveries."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

MAX_AGE_S = 300


@dataclass
class WebhookReceiver:
    secret: str
    fail_first: int = 1  # answer 500 to this many deliveries, then 200
    statuses: list[int] = field(default_factory=list)  # every answer given, in order
    accepted: list[dict[str, Any]] = field(default_factory=list)  # verified, answered 200
    rejected: int = 0  # bad signature or stale timestamp

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/alerts", self.receive, methods=["POST"])])

    def verified(self, request: Request, body: bytes) -> bool:
        timestamp = request.headers.get("X-Signature-Timestamp", "")
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > MAX_AGE_S:
            return False
        expected = "sha256=" + hmac.new(self.secret.encode(), f"{timestamp}.".encode() + body,
                                        hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, request.headers.get("X-Signature-256", ""))

    async def receive(self, request: Request) -> Response:
        body = await request.body()
        if not self.verified(request, body):
            self.rejected += 1
            self.statuses.append(401)
            return JSONResponse({"error": "bad signature"}, 401)
        if len(self.statuses) < self.fail_first:
            self.statuses.append(500)
            return JSONResponse({"error": "receiver down"}, 500)
        self.statuses.append(200)
        self.accepted.append(json.loads(body))
        return JSONResponse({"ok": True})
