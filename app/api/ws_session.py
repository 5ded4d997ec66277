"""One WebSocket session following one channel: who it is, how long it may stay, what
it may send. Transport only; what travels is decided in `app.core.processor`.

- Auth: the `Authorization` header, the session cookie, or a first message
  `{"type": "auth", "token": ...}` within `WS_AUTH_TIMEOUT_S`. A cookie is sent by the
  browser on its own, so a cookie-authenticated socket must come from an allowed
  `Origin` (cross-site WebSocket hijacking); header and message auth carry the token
  explicitly and need no such check.
- Lifetime: the session ends when its token expires (close 4401 after an
  `error/token_expired` message) unless the client sends a fresh token of the same
  tenant and user as `{"type": "auth", "token": ...}` before then.
- Slow readers: a send that cannot complete within `WS_SEND_TIMEOUT_S`, or a client more
  than `PUSH_BUFFER_EVENTS` behind, ends the session with 1013 (reconnect and resume).
- Bad messages get an `error` message; the socket stays open.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import WebSocket
from fastapi.exceptions import RequestValidationError

from app.api.json_body import parse_json
from app.core.auth import Principal
from app.core.errors import Forbidden, Unauthenticated
from app.core.services import Services
from app.realtime.bus import SlowConsumer, Subscription
from app.realtime.events import Event, is_event_id, parse_event_id

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_INTERNAL_ERROR = 1011


class TokenExpired(Exception):
    """The session's token expired and no fresh one arrived."""


class FeedComplete(Exception):
    """The watched channel's final event was delivered (a background run ended)."""


@dataclass(frozen=True, slots=True)
class Watch:
    """What a feed follows. A customer's insights go on forever and start from "now";
    a background run's events start from its first one and end with its final event.
    `ending(after)` is asked when a replay after `after` held no final event: None while
    the channel goes on, else the events that end the feed (none if the client had the
    final one already; the final event rebuilt if the replay window lost it)."""

    channel: str
    start_after: str | None = None
    is_final: Callable[[Event], bool] | None = None
    ending: Callable[[str | None], Awaitable[list[Event] | None]] | None = None

    def ends_with(self, event: Event) -> bool:
        return self.is_final is not None and self.is_final(event)


def valid_event_id(value: object) -> str | None:
    return value if isinstance(value, str) and is_event_id(value) else None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def check_cookie_origin(websocket: WebSocket, services: Services) -> None:
    """Same-origin pages (the console, the playground) and the listed origins only."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return  # not a browser: it chose to send the cookie itself
    if urlsplit(origin).netloc.lower() == websocket.headers.get("host", "").lower():
        return
    settings = services.settings
    allowed = {_origin(url) for url in settings.allowed_origins}
    if settings.public_url:
        allowed.add(_origin(settings.public_url))
    if _origin(origin) not in allowed:
        raise Forbidden("cookie sign-in from another site is not accepted")


async def authenticate_websocket(websocket: WebSocket, services: Services) -> tuple[Principal, str | None]:
    """Returns the principal and the resume point an auth message may carry (a browser
    reconnecting cannot set headers, so it resumes in the same round trip)."""
    settings = services.settings
    header = websocket.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("Authorization header must be 'Bearer <token>'")
        return await services.verifier.verify(token.strip()), None
    cookie = websocket.cookies.get(settings.auth_cookie_name)
    if cookie:
        check_cookie_origin(websocket, services)
        return await services.verifier.verify(cookie), None
    try:
        async with asyncio.timeout(settings.ws_auth_timeout_s):
            message = parse_json(await websocket.receive_text() or "", max_chars=settings.ws_message_max_chars)
    except (TimeoutError, KeyError, RequestValidationError) as error:  # KeyError: a binary frame
        raise Unauthenticated("no auth message") from error
    if not isinstance(message, dict) or message.get("type") != "auth" or not isinstance(message.get("token"), str):
        raise Unauthenticated("first message must be {type: auth, token}")
    return await services.verifier.verify(message["token"]), valid_event_id(message.get("last_event_id"))


class WebSocketFeed:
    def __init__(
        self,
        websocket: WebSocket,
        services: Services,
        watch: Watch,
        principal: Principal,
        authorize: Callable[[Principal], None],
    ) -> None:
        self.websocket = websocket
        self.services = services
        self.watch = watch
        self.channel = watch.channel
        self.principal = principal
        self._authorize = authorize  # raises Forbidden: re-checked for every fresh token
        self.delivered: set[str] = set()
        self._send_lock = asyncio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            try:
                async with asyncio.timeout(self.services.settings.ws_send_timeout_s):
                    await self.websocket.send_text(json.dumps(message))
            except TimeoutError:
                raise SlowConsumer(self.channel) from None

    async def error(self, code: str, message: str) -> None:
        await self.send({"type": "error", "code": code, "message": message})

    async def deliver(self, events: list[Event]) -> None:
        """Sends what the client has not had. The token's expiry is checked before each
        event: a long replay to a slow reader, or live events sent while the client's own
        message is being handled, must not outlast it."""
        for event in events:
            if event.id not in self.delivered:
                if time.time() >= self.principal.expires_at:
                    raise TokenExpired()
                self.delivered.add(event.id)
                await self.send(event.as_message())
                if self.watch.ends_with(event):
                    raise FeedComplete()
        if len(self.delivered) > 4 * self.services.settings.push_buffer_events:
            keep = self.services.settings.push_buffer_events
            self.delivered = set(sorted(self.delivered, key=parse_event_id)[-keep:])

    async def run(self, subscription: Subscription, last_event_id: str | None) -> None:
        """Reads the client and follows the channel in one coroutine: an idle session (a
        screen, for hours) keeps that coroutine and nothing else; a delivery task exists
        only while live events wait to be sent. Returns when the client leaves."""
        resume_from = last_event_id or self.watch.start_after
        history = await self.services.bus.history(self.channel, resume_from)
        await self.deliver(history)
        if self.watch.ending is not None:
            ending = await self.watch.ending(history[-1].id if history else resume_from)
            if ending is not None:
                await self.deliver(ending)
                raise FeedComplete()
        await self.send({"type": "ready"})
        session = asyncio.current_task()
        assert session is not None
        following = _Following(self, subscription, session)
        heartbeat_s = self.services.settings.push_heartbeat_s
        try:
            while True:
                valid_s = self.principal.expires_at - time.time()  # the token's expiry is wall-clock time
                if valid_s <= 0:
                    raise TokenExpired()
                quiet_s = following.last_delivery + heartbeat_s - time.monotonic()  # a clock step must not delay it
                if quiet_s <= 0:
                    following.last_delivery = time.monotonic()
                    await self.send({"type": "heartbeat"})
                    continue
                try:
                    async with asyncio.timeout(min(quiet_s, valid_s)):
                        raw = await self.websocket.receive()
                except TimeoutError:
                    continue
                if raw["type"] == "websocket.disconnect":
                    return
                await self._handle_client(raw)
        except asyncio.CancelledError:
            if following.ended is not None and session.uncancel() == 0:  # only the delivery's own cancel
                raise following.ended from None
            raise
        finally:
            following.stop()

    async def _handle_client(self, raw: dict[str, Any]) -> None:
        """Handles `resume`, `auth` (a fresh token) and `ping`; anything else is answered
        with an error and the socket stays open."""
        try:
            message = parse_json(raw.get("text") or "", max_chars=self.services.settings.ws_message_max_chars)
        except RequestValidationError as invalid:
            await self.error("invalid_message", f"messages are JSON text: {invalid.errors()[0]['msg']}")
            return
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "resume":
            last_event_id = valid_event_id(message.get("last_event_id"))
            if last_event_id is None:
                await self.error("invalid_event_id", "last_event_id must be an event id such as 1700000000000-0")
                return
            await self.deliver(await self.services.bus.history(self.channel, last_event_id))
        elif kind == "auth":
            await self._refresh(message.get("token"))
        elif kind == "ping":
            await self.send({"type": "pong"})
        else:
            await self.error("invalid_message", "expected a message of type resume, auth or ping")

    async def _refresh(self, token: object) -> None:
        if not isinstance(token, str):
            await self.error("invalid_token", "auth needs a token string")
            return
        try:
            fresh = await self.services.verifier.verify(token)
        except Unauthenticated as refused:
            self.services.security_log.token_refused(self.websocket, refused)
            await self.error("invalid_token", refused.detail)
            return
        if (fresh.tenant_id, fresh.user_id) != (self.principal.tenant_id, self.principal.user_id):
            await self.error("invalid_token", "a fresh token must name the same tenant and user")
            return
        self._authorize(fresh)  # a token that lost the role ends the session (4403)
        self.principal = fresh
        await self.send({"type": "auth_ok", "expires_at": fresh.expires_at})


class _Following:
    """The live half of a feed. While nothing waits, it is one callback on the
    subscription's arrival future; an arrival starts a task that sends what waits, then
    listens again. If sending ends the session (the final event, a slow or gone client),
    the reason is kept and the session's coroutine, waiting on the client, is cancelled
    to raise it."""

    def __init__(self, feed: WebSocketFeed, subscription: Subscription, session: asyncio.Task[Any]) -> None:
        self.feed = feed
        self.subscription = subscription
        self.session = session
        self.last_delivery = time.monotonic()
        self.ended: BaseException | None = None
        self._delivering: asyncio.Task[None] | None = None
        self._stopped = False
        self._arrival: asyncio.Future[None]
        self._listen()

    def _listen(self) -> None:
        self._arrival = self.subscription.arrival()
        self._arrival.add_done_callback(self._arrived)

    def _arrived(self, _: asyncio.Future[None]) -> None:
        if not self._stopped:
            self._delivering = asyncio.create_task(self._deliver())

    async def _deliver(self) -> None:
        try:
            while (event := self.subscription.next_event()) is not None:
                await self.feed.deliver([event])
                self.last_delivery = time.monotonic()
        except Exception as ended:  # noqa: BLE001 - the session's coroutine raises it
            if not self._stopped:
                self.ended = ended
                self._stopped = True
                self.session.cancel()
            return
        self._delivering = None
        if not self._stopped:
            self._listen()

    def stop(self) -> None:
        """The session ends: what is being sent is abandoned, and nothing more starts."""
        self._stopped = True
        # The callback closes a cycle (subscription, future, this, subscription) that would
        # keep the whole session's objects until a full collection.
        self._arrival.remove_done_callback(self._arrived)
        if self._delivering is not None:
            self._delivering.cancel()
