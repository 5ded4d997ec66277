"""Events shared by every replica through Redis Streams, replayable by id.

Publishing is one XADD per event (approximate MAXLEN keeps well over 1,000 events per
channel; idle channels expire after a day). Each process runs one reader task: a single
blocking XREAD over every channel that has local subscribers, fanning out to them. So
10,000 watching screens cost one Redis connection, not 10,000. A channel joins the
reader at the stream's last id as of subscription, and history comes from XRANGE, so
nothing published in between is lost.

A Redis outage degrades instead of failing: a publish that cannot reach Redis is
delivered to this process's own watchers (live, not replayable), a subscription made
during the outage starts from "now", history is empty until Redis answers again, and
the reader keeps retrying; every call reconnects by itself once Redis is back.

An event's payload is sealed with its tenant's data key (`app.crypto`), bound to its
channel: the streams, and Redis's snapshots of them, hold no analysis text, and an
entry copied into another stream does not open. Only the tenant id is in clear, to
find the key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.crypto.envelope import DecryptionFailed
from app.crypto.keyring import Keyring
from app.realtime.bus import REPLAY_MIN_EVENTS, SUBSCRIPTION_QUEUE_SIZE, LocalFanout, Subscription
from app.realtime.events import Event, IdClock, tenant_prefix

log = logging.getLogger(__name__)

KEY_PREFIX = "crm:events:"
STREAM_MAXLEN = 10 * REPLAY_MIN_EVENTS
STREAM_TTL_S = 24 * 3600
READ_BLOCK_MS = 200
READ_COUNT = 500


def _purpose(channel: str) -> str:
    return f"events.payload|{channel}"


class RedisStreamBus:
    def __init__(self, redis: Redis, keys: Keyring, *, queue_size: int = SUBSCRIPTION_QUEUE_SIZE) -> None:
        self.redis = redis
        self.keys = keys
        self._cursors: dict[str, str] = {}
        self._local = LocalFanout(queue_size, on_last_left=lambda channel: self._cursors.pop(channel, None))
        self._reader: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._outage_ids = IdClock()  # ids of events delivered locally while Redis is away

    async def publish(self, channel: str, *, type: str, tenant_id: str, data: dict[str, Any],
                      customer_id: str | None = None) -> Event:
        draft = Event(id="", type=type, tenant_id=tenant_id, data=data, customer_id=customer_id)
        payload = {"type": draft.type, "tenant_id": tenant_id, "customer_id": customer_id,
                   "data": data, "created_at": draft.created_at}
        key = KEY_PREFIX + channel
        try:
            sealed = (await self.keys.cipher(tenant_id)).seal(_purpose(channel), json.dumps(payload).encode())
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xadd(key, {"t": tenant_id, "e": sealed}, maxlen=STREAM_MAXLEN, approximate=True)
                pipe.expire(key, STREAM_TTL_S)
                event_id, _ = await pipe.execute()
        except (RedisError, OSError) as error:
            log.warning("Redis unavailable, event delivered to this process only: %r", error)
            event = Event(id=self._outage_ids.next(), type=type, tenant_id=tenant_id, data=data,
                          customer_id=customer_id, created_at=draft.created_at)
            self._local.deliver(channel, event)
            return event
        return Event(id=event_id.decode(), type=type, tenant_id=tenant_id, data=data,
                     customer_id=customer_id, created_at=draft.created_at)

    async def history(self, channel: str, after_id: str | None) -> list[Event]:
        if after_id is None:
            return []
        try:
            entries = await self.redis.xrange(KEY_PREFIX + channel, min=f"({after_id}", max="+",
                                              count=STREAM_MAXLEN)
        except (RedisError, OSError) as error:
            log.warning("Redis unavailable, no replay for now: %r", error)
            return []
        return [event for event_id, fields in entries if (event := await self._decode(channel, event_id, fields))]

    async def erase(self, channel: str) -> int:
        """Fails loudly when Redis is away: an erasure is never reported done when it was not."""
        return int(await self.redis.delete(KEY_PREFIX + channel))

    async def erase_events(self, channel: str, match: Callable[[Event], bool]) -> int:
        """Deletes the channel's events that `match` (a lead's scores on the tenant's
        scoring channel): each is opened to be judged, as nothing of it is in clear."""
        entries = await self.redis.xrange(KEY_PREFIX + channel, min="-", max="+")
        doomed = [event.id for event_id, fields in entries
                  if (event := await self._decode(channel, event_id, fields)) is not None and match(event)]
        return int(await self.redis.xdel(KEY_PREFIX + channel, *doomed)) if doomed else 0

    async def erase_tenant(self, tenant_id: str) -> int:
        keys = [key async for key in self.redis.scan_iter(match=KEY_PREFIX + tenant_prefix(tenant_id) + "*", count=500)]
        return int(await self.redis.delete(*keys)) if keys else 0

    async def subscribe(self, channel: str) -> Subscription:
        if channel not in self._local:
            try:
                latest = await self.redis.xrevrange(KEY_PREFIX + channel, count=1)
                self._cursors[channel] = latest[0][0].decode() if latest else "0-0"
            except (RedisError, OSError) as error:
                log.warning("Redis unavailable, following %s from now: %r", channel, error)
                self._cursors[channel] = f"{int(time.time() * 1000)}-0"
        subscription = self._local.add(channel)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_forever(), name="redis-bus-reader")
        self._wake.set()
        return subscription


    async def _read_forever(self) -> None:
        while True:
            if not self._cursors:
                self._wake.clear()
                await self._wake.wait()
                continue
            streams = {KEY_PREFIX + channel: cursor for channel, cursor in self._cursors.items()}
            try:
                batches = await self.redis.xread(streams, count=READ_COUNT, block=READ_BLOCK_MS)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - keep serving; Redis may come back
                log.warning("reading the event streams failed, retrying in 1 s: %r", error)
                await asyncio.sleep(1.0)
                continue
            for key, entries in batches or ():
                channel = (key.decode() if isinstance(key, bytes) else key)[len(KEY_PREFIX):]
                if channel not in self._cursors:
                    continue
                for event_id, fields in entries:
                    event = await self._decode(channel, event_id, fields)
                    self._cursors[channel] = event_id.decode() if isinstance(event_id, bytes) else event_id
                    if event is not None:
                        self._local.deliver(channel, event)

    async def _decode(self, channel: str, event_id: bytes | str, fields: dict[bytes, bytes]) -> Event | None:
        """The event, or None when it does not open: its tenant was erased, or its key
        could not be read (the database is away), which must not stop the reader."""
        raw = fields[b"e"]
        if b"t" in fields:  # sealed; events written before encryption are plain JSON
            try:
                raw = (await self.keys.cipher(fields[b"t"].decode())).open(_purpose(channel), raw)
            except DecryptionFailed as error:
                log.warning("an event does not open, skipped: %r", error)
                return None
            except Exception:  # noqa: BLE001 - one event lost beats a dead reader
                log.exception("the key of an event could not be read, skipped")
                return None
        event_id = event_id.decode() if isinstance(event_id, bytes) else event_id
        return Event(id=event_id, **json.loads(raw))

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
        await self.redis.aclose()
