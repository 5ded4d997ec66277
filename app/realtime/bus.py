"""The event bus: publish to a channel, replay what a client missed, follow it live.

Two implementations share `Subscription`: `InProcessBus` (the embedded default, one
replica) and `RedisStreamBus` (`app.realtime.redis_bus`, events shared by replicas and
replayable from Redis Streams). A subscription registers for live events *before* it
reads history, then drops live events it already replayed, so a resume has no gap and
no duplicate.

Slow consumers never slow publishers: each subscription has a bounded queue, and one
that overflows is marked `overflowed` and ends; its client reconnects with its last
event id and replays what it missed.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from app.realtime.events import Event, IdClock, parse_event_id, tenant_prefix

SUBSCRIPTION_QUEUE_SIZE = 256
REPLAY_MIN_EVENTS = 1_000
REPLAY_MIN_AGE_S = 300.0
MAX_TOTAL_EVENTS = 200_000  # in-process replay memory across channels (~100 MB of insights)
CHANNEL_IDLE_EXPIRY_S = 24 * 3600.0  # as the Redis streams expire


class SlowConsumer(Exception):
    """The subscriber fell more than its buffer behind; it must resume from its last id."""


# How far ahead of this process's clock an event id may be and still be one a channel
# could have issued (Redis stamps ids with its own clock).
FUTURE_ID_TOLERANCE_MS = 60_000


def _from_the_future(event_id: str) -> bool:
    return parse_event_id(event_id)[0] > time.time() * 1000 + FUTURE_ID_TOLERANCE_MS


class Subscription:
    """One follower's live events. Most followers are idle screens (10,000 on a process),
    so an idle one holds no buffer and no waiting task: the buffer exists while events
    wait to be read, and `arrival()` is one future, made only while someone waits."""

    __slots__ = ("channel", "overflowed", "_unregister", "_limit", "_pending", "_arrival")

    def __init__(self, channel: str, unregister: Callable[[Subscription], None],
                 queue_size: int = SUBSCRIPTION_QUEUE_SIZE) -> None:
        self.channel = channel
        self.overflowed = False
        self._unregister = unregister
        self._limit = queue_size
        self._pending: deque[Event] | None = None
        self._arrival: asyncio.Future[None] | None = None

    def offer(self, event: Event) -> None:
        """Called by the bus for each live event; never blocks the publisher."""
        if self.overflowed:
            return
        if self._pending is None:
            self._pending = deque()
        if len(self._pending) < self._limit:
            self._pending.append(event)
        else:
            self.overflowed = True
            self._pending = None  # free the buffered events now
        if self._arrival is not None and not self._arrival.done():
            self._arrival.set_result(None)

    @property
    def pending(self) -> int:
        return len(self._pending) if self._pending is not None else 0

    def arrival(self) -> asyncio.Future[None]:
        """Done once an event (or the overflow) is waiting to be taken."""
        if self._arrival is None or self._arrival.done():
            self._arrival = asyncio.get_running_loop().create_future()
            if self._pending or self.overflowed:
                self._arrival.set_result(None)
        return self._arrival

    def next_event(self) -> Event | None:
        """The oldest waiting event, or None; raises `SlowConsumer` once it overflowed.
        One at a time, so an event being sent still counts against the buffer's limit."""
        if self.overflowed:
            raise SlowConsumer(self.channel)
        pending = self._pending
        if not pending:
            return None
        event = pending.popleft()
        if not pending:
            self._pending = None
        return event

    def close(self) -> None:
        self._unregister(self)

    async def events(self, history: list[Event], last_event_id: str | None) -> AsyncIterator[Event]:
        """History after `last_event_id`, then live events, each exactly once, in order.

        Live events are compared with the client's id too: Redis's shared reader can be
        behind the stream when a subscription joins it, and hand it events the client
        already had. An id from the future (made up, another system's) is no such floor:
        every live event would fall below it, a feed silent for good."""
        cursor = None if last_event_id is None or _from_the_future(last_event_id) else last_event_id
        try:
            for event in history:
                if event.after(cursor):
                    cursor = event.id
                    yield event
            while True:
                await self.arrival()
                while (event := self.next_event()) is not None:
                    if event.after(cursor):
                        cursor = event.id
                        yield event
        finally:
            self.close()


class LocalFanout:
    """This process's subscriptions per channel, shared by both bus implementations."""

    def __init__(self, queue_size: int, on_last_left: Callable[[str], None] | None = None) -> None:
        self._subscribers: dict[str, set[Subscription]] = {}
        self._queue_size = queue_size
        self._on_last_left = on_last_left

    def __contains__(self, channel: str) -> bool:
        return channel in self._subscribers

    def add(self, channel: str) -> Subscription:
        subscription = Subscription(channel, self._remove, self._queue_size)
        self._subscribers.setdefault(channel, set()).add(subscription)
        return subscription

    def _remove(self, subscription: Subscription) -> None:
        subscribers = self._subscribers.get(subscription.channel)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[subscription.channel]
                if self._on_last_left is not None:
                    self._on_last_left(subscription.channel)

    def deliver(self, channel: str, event: Event) -> None:
        for subscription in tuple(self._subscribers.get(channel, ())):
            subscription.offer(event)

    def clear(self) -> None:
        self._subscribers.clear()


class EventBus(Protocol):
    async def publish(self, channel: str, *, type: str, tenant_id: str, data: dict[str, Any],
                      customer_id: str | None = None) -> Event: ...

    async def subscribe(self, channel: str) -> Subscription: ...

    async def history(self, channel: str, after_id: str | None) -> list[Event]: ...

    async def erase(self, channel: str) -> int:
        """Forgets the channel's replayable events (a customer's erasure)."""

    async def erase_events(self, channel: str, match: Callable[[Event], bool]) -> int:
        """Forgets the channel's events that `match`; returns how many."""

    async def erase_tenant(self, tenant_id: str) -> int:
        """Forgets every channel of the tenant; returns how many channels."""

    async def close(self) -> None: ...


class InProcessBus:
    """One replica's bus: per-channel replay logs and live fan-out in memory.

    Channel names come from client-chosen customer ids, so memory is bounded as the
    Redis streams are: a channel's log keeps at least the last 1,000 events and the last
    5 minutes (within `max_events` per channel), a log not written to for `idle_expiry_s`
    is dropped, and past `max_total_events` across channels the least recently written
    channels are dropped first.
    """

    def __init__(
        self,
        *,
        max_events: int = 10 * REPLAY_MIN_EVENTS,
        queue_size: int = SUBSCRIPTION_QUEUE_SIZE,
        max_total_events: int = MAX_TOTAL_EVENTS,
        idle_expiry_s: float = CHANNEL_IDLE_EXPIRY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logs: OrderedDict[str, deque[tuple[float, Event]]] = OrderedDict()  # least recently written first
        self._local = LocalFanout(queue_size)
        self._clock = IdClock()
        self._now = clock
        self._max_events = max_events
        self._max_total = max_total_events
        self._idle_expiry_s = idle_expiry_s
        self._total = 0

    @property
    def retained_events(self) -> int:
        return self._total

    async def publish(self, channel: str, *, type: str, tenant_id: str, data: dict[str, Any],
                      customer_id: str | None = None) -> Event:
        event = Event(id=self._clock.next(), type=type, tenant_id=tenant_id, data=data,
                      customer_id=customer_id)
        now = self._now()
        log = self._logs.setdefault(channel, deque())
        self._logs.move_to_end(channel)
        log.append((now, event))
        self._total += 1
        # Keep at least the last 1,000 events and the last 5 minutes, within a hard cap.
        while len(log) > self._max_events or (
            len(log) > REPLAY_MIN_EVENTS and now - log[0][0] > REPLAY_MIN_AGE_S
        ):
            log.popleft()
            self._total -= 1
        self._evict(now)
        self._local.deliver(channel, event)
        return event

    def _evict(self, now: float) -> None:
        while self._logs:
            oldest_channel, oldest_log = next(iter(self._logs.items()))
            idle = now - oldest_log[-1][0] > self._idle_expiry_s
            if not idle and self._total <= self._max_total:
                return
            if oldest_channel == next(reversed(self._logs)):  # never the channel just written
                return
            del self._logs[oldest_channel]
            self._total -= len(oldest_log)

    async def subscribe(self, channel: str) -> Subscription:
        return self._local.add(channel)

    async def history(self, channel: str, after_id: str | None) -> list[Event]:
        if after_id is None:
            return []
        return [event for _, event in self._logs.get(channel, ()) if event.after(after_id)]

    async def erase(self, channel: str) -> int:
        log = self._logs.pop(channel, None)
        self._total -= len(log or ())
        return int(log is not None)

    async def erase_events(self, channel: str, match: Callable[[Event], bool]) -> int:
        log = self._logs.get(channel)
        if not log:
            return 0
        kept = deque(item for item in log if not match(item[1]))
        erased = len(log) - len(kept)
        self._logs[channel] = kept
        self._total -= erased
        return erased

    async def erase_tenant(self, tenant_id: str) -> int:
        channels = [channel for channel in self._logs if channel.startswith(tenant_prefix(tenant_id))]
        for channel in channels:
            await self.erase(channel)
        return len(channels)


    async def close(self) -> None:
        self._local.clear()
