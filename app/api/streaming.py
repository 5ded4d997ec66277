"""Push transport: WebSocket and SSE feeds of a tenant's channels. Transport only:
what is published is decided in `app.core.processor`, how it travels in `app.realtime`.

Every feed is: authenticate, name the channel from the token's tenant (so another
business's channel cannot even be named), replay what the client missed after its last
event id, then follow live events with heartbeats, until the token expires. A client
more than `PUSH_BUFFER_EVENTS` behind is disconnected (WebSocket close 1013, SSE `error`
event) and resumes from its last id, so a slow screen never grows the server's memory.
The WebSocket session itself is `app.api.ws_session`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from typing import Annotated, Any

from fastapi import (
    APIRouter, Header, Query, Request, Response, WebSocket, WebSocketDisconnect, WebSocketException, status,
)
from opentelemetry import trace
from pydantic import TypeAdapter, ValidationError
from starlette.requests import HTTPConnection
from sse_starlette.sse import EventSourceResponse
from starlette.websockets import WebSocketState

from app.api.access import guard_request, policy_for
from app.api.deps import CurrentPrincipal, CustomerIdPath, ServicesDep, get_workflows
from app.api.errors import ErrorInfo, describe_error
from app.api.feed_dispatch import FeedRoute
from app.api.routes.workflows import WorkflowId, ensure_may_run
from app.api.ws_session import (
    CLOSE_FORBIDDEN,
    CLOSE_INTERNAL_ERROR,
    CLOSE_TRY_AGAIN_LATER,
    CLOSE_UNAUTHENTICATED,
    FeedComplete,
    TokenExpired,
    Watch,
    WebSocketFeed,
    authenticate_websocket,
    valid_event_id,
)
from app.core.auth import Principal
from app.core.errors import Forbidden, NotFound, Unauthenticated
from app.core.metrics import SSE_SESSIONS, WEBSOCKET_SESSIONS
from app.core.services import Services
from app.realtime.bus import SlowConsumer, Subscription
from app.core.workflows import is_end
from app.realtime.events import ADMIN_CHANNEL, Event, customer_channel, scoring_channel, workflow_channel
from chains import spans
from chains.schemas import CustomerId

log = logging.getLogger(__name__)
router = APIRouter(tags=["real-time push"])

# The plain feed routes check the id with the very constraint the chains' schemas use.
_CUSTOMER_ID: TypeAdapter[str] = TypeAdapter(Annotated[str, CustomerId])


def ensure_may_watch(websocket: WebSocket, principal: Principal) -> None:
    """WebSockets authenticate in the handler (first-message auth), so roles are checked here."""
    policy = policy_for(websocket.scope["route"].path, "WEBSOCKET")
    if policy is None or (policy.roles is not None and not principal.has_any_role(policy.roles)):
        raise Forbidden("no role that may watch this tenant's channels")


def following(channel_of: Callable[[Principal], str]) -> Callable[[Principal], Awaitable[Watch]]:
    """A feed of a channel named from the token alone (no lookup needed)."""

    async def watch_of(principal: Principal) -> Watch:
        return Watch(channel_of(principal))

    return watch_of


async def _close(websocket: WebSocket, code: int, reason: str, timeout_s: float) -> None:
    """Closes with `code`; bounded, because a client that stopped reading blocks the
    close frame too (it gets the frame if it reads again within `timeout_s`)."""
    if websocket.application_state != WebSocketState.CONNECTED:
        return
    with suppress(Exception):
        async with asyncio.timeout(timeout_s):
            await websocket.close(code, reason=reason.encode()[:123].decode(errors="ignore"))  # the frame's limit


async def serve_websocket(
    websocket: WebSocket, watch_of: Callable[[Principal], Awaitable[Watch]], last_event_id: str | None
) -> None:
    services: Services = websocket.app.state.services
    close_timeout_s = services.settings.ws_send_timeout_s
    await websocket.accept()
    principal: Principal | None = None
    try:
        principal, auth_event_id = await authenticate_websocket(websocket, services)
        ensure_may_watch(websocket, principal)
    except Unauthenticated as error:
        services.security_log.token_refused(websocket, error)
        await _close(websocket, CLOSE_UNAUTHENTICATED, error.detail, close_timeout_s)
        return
    except Forbidden as error:
        services.security_log.record_for(websocket, "forbidden_role", principal, {"reason": error.detail})
        await _close(websocket, CLOSE_FORBIDDEN, error.detail, close_timeout_s)
        return
    except WebSocketDisconnect:
        return  # left before its auth message: nobody to answer, nothing refused
    subscription: Subscription | None = None
    try:
        watch = await watch_of(principal)
        subscription = await services.bus.subscribe(watch.channel)
        WEBSOCKET_SESSIONS.inc()
        feed = WebSocketFeed(websocket, services, watch, principal, lambda p: ensure_may_watch(websocket, p))
        await feed.run(subscription, valid_event_id(auth_event_id or last_event_id))
    except FeedComplete:
        pass  # closed 1000 below: the run ended
    except SlowConsumer:
        # The close frame queues behind what the client has not read: wait for it to
        # read again (bounded), so it learns why instead of seeing a bare disconnect.
        await _close(websocket, CLOSE_TRY_AGAIN_LATER, "too slow: reconnect with last_event_id",
                     services.settings.ws_slow_close_wait_s)
    except TokenExpired:
        with suppress(Exception):
            await feed.error("token_expired", "the token expired: reconnect with a fresh one")
        await _close(websocket, CLOSE_UNAUTHENTICATED, "token expired", close_timeout_s)
    except (NotFound, Forbidden) as error:  # a run id of no business of the caller's, its chain's roles, a fresh token's
        await _close(websocket, CLOSE_FORBIDDEN, error.detail, close_timeout_s)
    except WebSocketDisconnect:
        pass
    except Exception as error:  # a store outage or a bug
        info = _feed_failed(_route_of(websocket), error)
        await _close(websocket, CLOSE_TRY_AGAIN_LATER if info.retryable else CLOSE_INTERNAL_ERROR,
                     f"{info.code}: {info.message}", close_timeout_s)
    finally:
        if subscription is not None:
            subscription.close()
            WEBSOCKET_SESSIONS.dec()
        await _close(websocket, 1000, "", close_timeout_s)


def _feed_failed(route: str, error: Exception) -> ErrorInfo:
    """How a feed that failed (a store outage, a bug) tells its client, which must not
    take it for a feed that is done (WebSocket 1000, an SSE response that just ends).
    A WebSocket closes 1013 when retrying shortly can succeed (the database is away), so
    clients reconnect and resume as after a slow-reader close, and 1011 otherwise, with
    `describe_error`'s code and message as the reason; an SSE feed ends with an `error`
    event carrying them and `retryable`. The details stay in the server log (under the
    route's template: no customer id), and the trace names the error's type."""
    info = describe_error(error)
    spans.failed(trace.get_current_span(), error)  # the request's span, when tracing is on
    if info.retryable:
        log.warning("feed %s interrupted: %r", route, error)
    else:
        log.error("feed %s failed", route, exc_info=error)
    return info


def _route_of(connection: HTTPConnection) -> str:
    return str(getattr(connection.scope.get("route"), "path", "feed"))


def feed_route(path: str, name: str, channel_of: Callable[[Principal, dict[str, str]], str]) -> FeedRoute:
    """A feed an idle screen holds open for hours, as a plain Starlette route: FastAPI's
    WebSocket route keeps two exit stacks and its dependency frames alive for the whole
    session (about 4 of 39 KB per idle session, tracemalloc at 2,000). What it reads (a
    customer id in the path, `last_event_id` in the query) is checked here instead, and
    the app-wide access guard, which FastAPI does not attach to a plain route, is run.
    `app.api.feed_dispatch` calls it past the router and the exception middleware, so it
    answers its own errors."""

    async def endpoint(websocket: WebSocket) -> None:
        websocket.scope["route"] = route  # as FastAPI's routes set it: policy and logs read its template
        try:
            await guard_request(websocket)
        except WebSocketException as refused:  # a route without a policy: refused before the handshake
            await websocket.close(refused.code, refused.reason)
            return
        params = websocket.path_params
        customer_id = params.get("customer_id")
        if customer_id is not None:
            try:
                _CUSTOMER_ID.validate_python(customer_id)
            except ValidationError:
                await websocket.close(status.WS_1008_POLICY_VIOLATION, reason="customer_id: letters, digits and _.:- only")
                return
        await serve_websocket(websocket, following(lambda p: channel_of(p, params)),
                              websocket.query_params.get("last_event_id"))

    route = FeedRoute(path, endpoint, name=name)
    return route


FEEDS = [  # served by app.api.feed_dispatch, at these paths: include `router` without a prefix
    feed_route("/ws/ai/insights/{customer_id}", "watch_customer_insights",
               lambda p, params: customer_channel(p.tenant_id, params["customer_id"])),
    feed_route("/ws/ai/scoring", "watch_lead_scores", lambda p, _: scoring_channel(p.tenant_id)),
    # Operator alerts (provider circuit opened/closed) for admins of any tenant: they
    # concern the shared providers, so every tenant's admins follow the same channel.
    feed_route("/ws/ai/admin", "watch_admin_alerts", lambda p, _: ADMIN_CHANNEL),
]
router.routes += FEEDS


# How long EventSource waits before reconnecting after a failed feed: an outage may pass
# soon, a fault is not retried every few seconds (its default) by every screen at once.
RECONNECT_AFTER_OUTAGE_MS = 5_000
RECONNECT_AFTER_FAULT_MS = 30_000


def _sse_error(code: str, message: str, retryable: bool = True) -> dict[str, Any]:
    return {"event": "error", "data": json.dumps({"code": code, "message": message, "retryable": retryable})}


def sse_response(
    connection: HTTPConnection, services: Services, watch: Watch, resume_from: str | None, principal: Principal
) -> EventSourceResponse:
    return EventSourceResponse(
        sse_events(_route_of(connection), services, watch, resume_from, principal.expires_at),
        ping=int(services.settings.push_heartbeat_s),
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _sse_event(event: Event) -> dict[str, str]:
    return {"id": event.id, "event": event.type, "data": json.dumps(event.as_message())}


async def sse_events(
    route: str, services: Services, watch: Watch, last_event_id: str | None, expires_at: float
) -> AsyncIterator[dict[str, Any]]:
    """The channel's events until the token expires: then an `error` event
    (`token_expired`) ends the feed, and the client reconnects with a fresh token and
    its Last-Event-ID. A run's feed ends after its final event. This runs after the
    response's headers went out, so a failure ends it with an `error` event too."""
    subscription: Subscription | None = None
    try:
        subscription = await services.bus.subscribe(watch.channel)
        SSE_SESSIONS.inc()
        resume_from = last_event_id or watch.start_after
        history = await services.bus.history(watch.channel, resume_from)
        if watch.ending is not None and not any(watch.ends_with(event) for event in history):
            ending = await watch.ending(history[-1].id if history else resume_from)
            if ending is not None:
                for event in history + ending:
                    yield _sse_event(event)
                return
        events = subscription.events(history, resume_from)
        while True:
            try:
                async with asyncio.timeout(max(0.0, expires_at - time.time())):
                    event = await anext(events)
            except TimeoutError:
                yield _sse_error("token_expired", "the token expired: reconnect with a fresh one and Last-Event-ID")
                return
            yield _sse_event(event)
            if watch.ends_with(event):
                return
    except SlowConsumer:
        yield _sse_error("slow_consumer", "too slow: reconnect with Last-Event-ID")
    except Exception as error:  # a store outage or a bug
        info = _feed_failed(route, error)
        yield {**_sse_error(info.code, info.message, info.retryable),
               "retry": RECONNECT_AFTER_OUTAGE_MS if info.retryable else RECONNECT_AFTER_FAULT_MS}
    finally:
        if subscription is not None:
            subscription.close()
            SSE_SESSIONS.dec()


@router.get("/api/v1/ai/stream/insights/{customer_id}")
async def stream_customer_insights(
    customer_id: CustomerIdPath,
    request: Request,
    principal: CurrentPrincipal,
    services: ServicesDep,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id: str | None = None,
) -> EventSourceResponse:
    """Server-sent events of a customer's insights and alerts, resumable with Last-Event-ID."""
    channel = customer_channel(principal.tenant_id, customer_id)
    resume_from = valid_event_id(last_event_id_header or last_event_id)
    return sse_response(request, services, Watch(channel), resume_from, principal)


@router.get("/api/v1/ai/stream/admin")
async def stream_admin_alerts(
    request: Request,
    principal: CurrentPrincipal,
    services: ServicesDep,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id: str | None = None,
) -> EventSourceResponse:
    """Server-sent operator alerts (admins), resumable with Last-Event-ID."""
    resume_from = valid_event_id(last_event_id_header or last_event_id)
    return sse_response(request, services, Watch(ADMIN_CHANNEL), resume_from, principal)


def _workflow_watch(conn: HTTPConnection, workflow_id: str) -> Callable[[Principal], Awaitable[Watch]]:
    """A background run's feed: from its first event (or the client's resume point) to
    its `end`. A run id the caller's tenant does not have is refused (and, if another
    tenant has it, recorded as a cross-tenant attempt)."""
    workflows = get_workflows(conn)

    async def watch_of(principal: Principal) -> Watch:
        run = await workflows.runs.get(principal.tenant_id, workflow_id)
        if run is None:
            conn.app.state.services.cross_tenant.notice_missing(conn, principal, "workflow_run", workflow_id)
            raise NotFound("no background run with this id in your tenant")
        ensure_may_run(conn, principal, run.chain)

        async def ending(after: str | None) -> list[Event] | None:
            return await workflows.ending(principal.tenant_id, workflow_id, after)

        return Watch(workflow_channel(principal.tenant_id, workflow_id), start_after="0-0", is_final=is_end,
                     ending=ending)

    return watch_of


@router.websocket("/ws/ai/workflows/{workflow_id}")
async def watch_workflow(
    websocket: WebSocket, workflow_id: WorkflowId, last_event_id: str | None = Query(default=None)
) -> None:
    """A background run's events from its start (or after `last_event_id`); closed with
    1000 after its `end`. Leaving does not cancel the run."""
    await serve_websocket(websocket, _workflow_watch(websocket, workflow_id), last_event_id)


@router.get("/api/v1/ai/stream/workflows/{workflow_id}")
async def stream_workflow(
    workflow_id: WorkflowId,
    request: Request,
    principal: CurrentPrincipal,
    services: ServicesDep,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id: str | None = None,
) -> Response:
    """Server-sent events of a background run, from its start or after Last-Event-ID;
    the response ends after the run's `end` event. Resuming after the `end` answers 204,
    which tells a browser's EventSource to stop reconnecting."""
    watch = await _workflow_watch(request, workflow_id)(principal)
    resume_from = valid_event_id(last_event_id_header or last_event_id)
    if resume_from is not None and await get_workflows(request).has_ended_before(
            principal.tenant_id, workflow_id, resume_from):
        return Response(status_code=204)
    return sse_response(request, services, watch, resume_from, principal)
