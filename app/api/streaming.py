"""Push transport: WebSocket and SSE feeds of a tenant's channels. Transport only:
what is published is decided in `app.core.processor`, how it travels in `app.realtime`.

Every feed is: authenticate, name the channel from the token's tenant (so another
business's channel cannot even be named), replay what the client missed after its last
event id, then follow live events with heartbeats. A client more than
`PUSH_BUFFER_EVENTS` behind is disconnected (WebSocket close 1013, SSE `error` event)
and resumes from its last id, so a slow screen never grows the server's memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import suppress
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, WebSocket, WebSocketDisconnect
from sse_starlette.sse import EventSourceResponse
from starlette.websockets import WebSocketState

from app.api.access import policy_for
from app.api.deps import CurrentPrincipal, ServicesDep
from app.core.auth import Principal, token_from_connection
from app.core.errors import Forbidden, Unauthenticated
from app.core.metrics import SSE_SESSIONS, WEBSOCKET_SESSIONS
from app.core.services import Services
from app.realtime.bus import SlowConsumer, Subscription
from app.realtime.events import Event, customer_channel, is_event_id, parse_event_id, scoring_channel

log = logging.getLogger(__name__)
router = APIRouter(tags=["real-time push"])

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TRY_AGAIN_LATER = 1013
CustomerIdPath = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$")]


def ensure_may_watch(websocket: WebSocket, principal: Principal) -> None:
    """WebSockets authenticate in the handler (first-message auth), so roles are checked here."""
    policy = policy_for(websocket.scope["route"].path, "WEBSOCKET")
    if policy is None or (policy.roles is not None and not principal.has_any_role(policy.roles)):
        raise Forbidden("no role that may watch this tenant's channels")


def valid_event_id(value: str | None) -> str | None:
    return value if value and is_event_id(value) else None


async def authenticate_websocket(websocket: WebSocket, services: Services) -> tuple[Principal, str | None]:
    """Header or cookie, else a first message `{"type": "auth", "token": ...}` within 5 s.

    The auth message may carry `last_event_id` too, so a reconnecting browser (which
    cannot set headers) resumes in the same round trip.
    """
    token = token_from_connection(websocket, services.settings.auth_cookie_name)
    last_event_id = None
    if token is None:
        try:
            async with asyncio.timeout(services.settings.ws_auth_timeout_s):
                message = await websocket.receive_json()
        except (TimeoutError, ValueError, KeyError) as error:
            raise Unauthenticated("no auth message") from error
        if not isinstance(message, dict) or message.get("type") != "auth" or not isinstance(message.get("token"), str):
            raise Unauthenticated("first message must be {type: auth, token}")
        token = message["token"]
        last_event_id = message.get("last_event_id") if isinstance(message.get("last_event_id"), str) else None
    return await services.verifier.verify(token), last_event_id


class WebSocketFeed:
    """One WebSocket session following one channel."""

    def __init__(self, websocket: WebSocket, services: Services, channel: str) -> None:
        self.websocket = websocket
        self.services = services
        self.channel = channel
        self.delivered: set[str] = set()
        self._send_lock = asyncio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.websocket.send_text(json.dumps(message))

    async def deliver(self, events: list[Event]) -> None:
        for event in events:
            if event.id not in self.delivered:
                self.delivered.add(event.id)
                await self.send(event.as_message())
        if len(self.delivered) > 4 * self.services.settings.push_buffer_events:
            keep = self.services.settings.push_buffer_events
            self.delivered = set(sorted(self.delivered, key=parse_event_id)[-keep:])

    async def run(self, subscription: Subscription, last_event_id: str | None) -> None:
        await self.deliver(await self.services.bus.history(self.channel, last_event_id))
        await self.send({"type": "ready"})
        reader = asyncio.create_task(self._read_client())
        try:
            while not reader.done():
                getter = asyncio.create_task(subscription.queue.get())
                done, _ = await asyncio.wait(
                    {getter, reader}, timeout=self.services.settings.push_heartbeat_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if getter not in done:
                    getter.cancel()
                    if not done:
                        await self.send({"type": "heartbeat"})
                    continue
                event = getter.result()
                if subscription.overflowed:
                    raise SlowConsumer(self.channel)
                await self.deliver([event])
            reader.result()
        finally:
            reader.cancel()
            with suppress(asyncio.CancelledError, WebSocketDisconnect):
                await reader

    async def _read_client(self) -> None:
        """Handles `resume` and `ping` messages; returns when the client leaves."""
        while True:
            try:
                message = await self.websocket.receive_json()
            except WebSocketDisconnect:
                return
            except ValueError:
                await self.send({"type": "error", "code": "invalid_message", "message": "expected JSON"})
                continue
            kind = message.get("type") if isinstance(message, dict) else None
            if kind == "resume":
                last_event_id = valid_event_id(message.get("last_event_id"))
                if last_event_id is None:
                    await self.send({"type": "error", "code": "invalid_event_id", "message": "bad last_event_id"})
                    continue
                await self.deliver(await self.services.bus.history(self.channel, last_event_id))
            elif kind == "ping":
                await self.send({"type": "pong"})


async def serve_websocket(websocket: WebSocket, channel_of: Any, last_event_id: str | None) -> None:
    services: Services = websocket.app.state.services
    await websocket.accept()
    try:
        principal, auth_event_id = await authenticate_websocket(websocket, services)
    except Unauthenticated as error:
        await websocket.close(CLOSE_UNAUTHENTICATED, reason=error.detail[:120])
        return
    try:
        ensure_may_watch(websocket, principal)
    except Forbidden as error:
        await websocket.close(CLOSE_FORBIDDEN, reason=error.detail[:120])
        return
    channel = channel_of(principal)
    subscription = await services.bus.subscribe(channel)
    WEBSOCKET_SESSIONS.inc()
    feed = WebSocketFeed(websocket, services, channel)
    try:
        await feed.run(subscription, valid_event_id(auth_event_id or last_event_id))
    except SlowConsumer:
        await websocket.close(CLOSE_TRY_AGAIN_LATER, reason="too slow: reconnect with last_event_id")
    except WebSocketDisconnect:
        pass
    finally:
        subscription.close()
        WEBSOCKET_SESSIONS.dec()
        if websocket.application_state == WebSocketState.CONNECTED and websocket.client_state == WebSocketState.CONNECTED:
            with suppress(Exception):
                await websocket.close()


@router.websocket("/ws/ai/insights/{customer_id}")
async def watch_customer_insights(
    websocket: WebSocket, customer_id: CustomerIdPath, last_event_id: str | None = Query(default=None)
) -> None:
    await serve_websocket(websocket, lambda p: customer_channel(p.tenant_id, customer_id), last_event_id)


@router.websocket("/ws/ai/scoring")
async def watch_lead_scores(websocket: WebSocket, last_event_id: str | None = Query(default=None)) -> None:
    await serve_websocket(websocket, lambda p: scoring_channel(p.tenant_id), last_event_id)


async def sse_events(
    services: Services, channel: str, last_event_id: str | None
) -> AsyncIterator[dict[str, str]]:
    subscription = await services.bus.subscribe(channel)
    SSE_SESSIONS.inc()
    try:
        history = await services.bus.history(channel, last_event_id)
        async for event in subscription.events(history, last_event_id):
            yield {"id": event.id, "event": event.type, "data": json.dumps(event.as_message())}
    except SlowConsumer:
        yield {"event": "error", "data": json.dumps(
            {"code": "slow_consumer", "message": "too slow: reconnect with Last-Event-ID", "retryable": True})}
    finally:
        subscription.close()
        SSE_SESSIONS.dec()


@router.get("/api/v1/ai/stream/insights/{customer_id}")
async def stream_customer_insights(
    customer_id: CustomerIdPath,
    principal: CurrentPrincipal,
    services: ServicesDep,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id: str | None = None,
) -> EventSourceResponse:
    """Server-sent events of a customer's insights and alerts, resumable with Last-Event-ID."""
    channel = customer_channel(principal.tenant_id, customer_id)
    resume_from = valid_event_id(last_event_id_header or last_event_id)
    return EventSourceResponse(
        sse_events(services, channel, resume_from),
        ping=int(services.settings.push_heartbeat_s),
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
