"""Cluster-wide provider slots: a semaphore in Redis shared by every replica.

A provider's rate limit is one number for the whole deployment, so per-process slots
alone either waste it (sized for the worst case) or overshoot it (sized for one
replica). Each run that holds a local slot (`app.core.scheduler`) therefore also holds
one lease here, and the leases of all replicas never exceed the limit.

Leases live in a sorted set scored by their expiry (Redis server time, so replicas
with skewed clocks agree). Acquiring is one Lua script: drop expired leases, count,
insert; so two replicas can never both take the last one. A replica that dies keeps
its leases only until they expire (`lease_ttl_s`); a living one renews the leases it
holds from one background task per process (one Redis call for all of them every
third of the TTL), not one task per run.

Waiting is bounded polling with jitter, not pub/sub, because the scheduler has at most
one waiter per process and provider (its pump hands each lease to whoever the local
order says is next), so polling costs at most a few calls a second per saturated
process; a release in this process wakes that waiter at once. Pub/sub would hold a
dedicated connection per process and lose notifications across reconnects, so it would
still need a polling backstop. Polling alone is unfair, though: the replica that just
released would usually win the race for its own lease. Waiters therefore take a ticket
in a queue (another sorted set, in arrival order, tickets expiring when their owner
stops asking), and a free lease goes to the oldest tickets first; a fast-path request
without a ticket only gets one when nobody is queued ahead of it.

Redis being away (a refused connection, or no answer at all for `retry_after_s`; one
call timing out is not enough, see `_outage_after`) must never hang or fail a run: a run
then proceeds under the local limit only (a `local` lease), this process stops
asking Redis for `retry_after_s`, logs once per outage and counts each such run; the
cluster limit applies again from the first call that Redis answers. Leases already held
are renewed only if they still exist (`XX`): a released lease is never resurrected by a
renewal racing its release, at the price that runs in flight across a Redis restart are
not counted until they finish.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.core.metrics import CLUSTER_SLOT_FALLBACKS, CLUSTER_SLOT_LEASES

log = logging.getLogger(__name__)

KEY_PREFIX = "crm:slots:"
REDIS_TIMEOUT_S = 0.5  # a slow Redis must not eat the real-time deadline: fall back instead
TICKET_TTL_S = 3.0  # a waiter polls far more often; a dead one's ticket goes after this
POLL_MIN_S = 0.01
POLL_MAX_S = 0.1
REDIS_FAILURES = (RedisError, OSError, TimeoutError)  # TimeoutError: our own REDIS_TIMEOUT_S

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# KEYS: leases, queue (ticket -> arrival number), queue expiry (ticket -> expiry), arrival counter
# ARGV: lease id, ticket id, limit, lease ttl, ticket ttl, enqueue (1/0), key ttl (whole seconds)
# Returns 1 when the lease was taken.
ACQUIRE = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for i = 1, #gone do
  redis.call('ZREM', KEYS[2], gone[i])
  redis.call('ZREM', KEYS[3], gone[i])
end
local free = tonumber(ARGV[3]) - redis.call('ZCARD', KEYS[1])
local ahead = redis.call('ZRANK', KEYS[2], ARGV[2])
if not ahead then ahead = redis.call('ZCARD', KEYS[2]) end
if free > ahead then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[7])
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('ZREM', KEYS[3], ARGV[2])
  return 1
end
if ARGV[6] == '1' then
  if not redis.call('ZSCORE', KEYS[2], ARGV[2]) then
    redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[4]), ARGV[2])
  end
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), ARGV[2])
  for i = 2, 4 do redis.call('EXPIRE', KEYS[i], ARGV[7]) end
end
return 0
"""

# KEYS: leases, queue, queue expiry. ARGV: lease id, ticket id (either may be '').
# One script for a release and for a waiter that leaves: whatever it held or queued goes.
LEAVE = """
if ARGV[1] ~= '' then redis.call('ZREM', KEYS[1], ARGV[1]) end
if ARGV[2] ~= '' then
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('ZREM', KEYS[3], ARGV[2])
end
return 0
"""

# KEYS: leases. ARGV: lease ttl, key ttl, lease ids. XX: never brings a released lease back.
RENEW = _NOW + """
local renewed = 0
for i = 3, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[i])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return renewed
"""


@dataclass(frozen=True, slots=True)
class Lease:
    """`id` None: granted while Redis was away, under the local limit only."""

    id: str | None


LOCAL_LEASE = Lease(None)


class ClusterSlots:
    def __init__(
        self,
        redis: Redis,
        *,
        provider: str,
        limit: int,
        lease_ttl_s: float = 10.0,
        retry_after_s: float = 2.0,
    ) -> None:
        if limit < 1:
            raise ValueError("the cluster limit must be at least 1")
        self.provider = provider
        self.limit = limit
        self.lease_ttl_s = lease_ttl_s
        self.retry_after_s = retry_after_s
        self._redis = redis
        base = f"{KEY_PREFIX}{{{provider}}}:"  # one hash slot, should Redis be a cluster
        self.keys = {"leases": base + "leases", "queue": base + "queue", "queue_expiry": base + "queue_expiry",
                     "arrivals": base + "arrivals"}
        self._key_ttl_s = str(math.ceil(max(lease_ttl_s, TICKET_TTL_S) * 3) + 60)
        self._acquire = redis.register_script(ACQUIRE)
        self._leave = redis.register_script(LEAVE)
        self._renew = redis.register_script(RENEW)
        self._process = uuid.uuid4().hex
        self._ids = itertools.count()
        self.held: set[str] = set()
        self._wake = asyncio.Event()  # set on every release here: a waiter retries at once
        self._renewer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._down_until = 0.0  # monotonic: until then, runs take local leases without asking
        self._outage = False
        self._silent_since: float | None = None  # monotonic: the first of unanswered calls
        self._closed = False

    @property
    def available(self) -> bool:
        """False during an outage, until the next call that Redis answers."""
        return not self._outage

    def _new_id(self) -> str:
        return f"{self._process}:{next(self._ids)}"

    async def try_acquire(self) -> Lease | None:
        """A lease if one is free and nobody is queued for it, else None (never waits)."""
        if self._skipping_redis():
            return self._local()
        lease_id = self._new_id()
        try:
            granted = await self._call_acquire(lease_id, self._new_id(), enqueue=False)
        except REDIS_FAILURES as error:
            # Not this time (the caller queues and the pump asks again), unless Redis is away.
            return self._local() if self._outage_after(error) else None
        return self._held(lease_id) if granted else None

    async def acquire(self, wanted: Callable[[], bool]) -> Lease | None:
        """Waits for a lease while `wanted()` stays true (None once it is not).

        The caller bounds the wait by making `wanted()` false (and calling `wake()`):
        the scheduler does when its last waiter leaves, by deadline or cancellation."""
        ticket = self._new_id()
        queued = False  # only a ticket Redis may have seen is taken out of its queue
        pause = POLL_MIN_S
        try:
            while wanted():
                if self._skipping_redis():
                    return self._local()
                lease_id = self._new_id()
                self._wake.clear()
                queued = True
                try:
                    granted = await self._call_acquire(lease_id, ticket, enqueue=True)
                except REDIS_FAILURES as error:
                    if self._outage_after(error):
                        return self._local()
                    granted = False
                if granted:
                    queued = False
                    return self._held(lease_id)
                try:
                    async with asyncio.timeout(pause * random.uniform(0.5, 1.5)):
                        await self._wake.wait()
                    pause = POLL_MIN_S  # a release: the next one may come soon too
                except TimeoutError:
                    pause = min(pause * 2, POLL_MAX_S)
            return None
        finally:
            if queued:
                self._forget_in_redis("", ticket)

    def release(self, lease: Lease) -> None:
        """Synchronous, so a run's `finally` never waits on Redis: the lease stops being
        renewed now and leaves Redis in the background (or by expiry if Redis is away)."""
        if lease.id is not None and lease.id in self.held:
            self.held.discard(lease.id)
            CLUSTER_SLOT_LEASES.labels(self.provider).dec()
            self._forget_in_redis(lease.id, "")
        else:
            self.wake()

    def wake(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        """Stops renewing (leases still held then expire) and lets releases finish."""
        self._closed = True
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def _call_acquire(self, lease_id: str, ticket: str, *, enqueue: bool) -> bool:
        keys = self.keys
        args: list[str | int] = [lease_id, ticket, self.limit, repr(self.lease_ttl_s), repr(TICKET_TTL_S), int(enqueue), self._key_ttl_s]
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                granted = await self._acquire(
                    keys=[keys["leases"], keys["queue"], keys["queue_expiry"], keys["arrivals"]], args=args)
        except BaseException:
            # The script may have run before the reply was lost (timeout, cancellation):
            # whatever it took must not stay taken until it expires.
            self._forget_in_redis(lease_id, ticket)
            raise
        self._answered()
        return bool(granted)

    def _held(self, lease_id: str) -> Lease:
        self.held.add(lease_id)
        CLUSTER_SLOT_LEASES.labels(self.provider).inc()
        if self._renewer is None and not self._closed:
            self._renewer = asyncio.create_task(self._renew_forever(), name=f"cluster-slots-{self.provider}")
        return Lease(lease_id)

    def _local(self) -> Lease:
        CLUSTER_SLOT_FALLBACKS.labels(self.provider).inc()
        return LOCAL_LEASE

    def _skipping_redis(self) -> bool:
        return self._outage and time.monotonic() < self._down_until

    def _outage_after(self, error: BaseException) -> bool:
        """Whether a failed call means Redis is away (then runs go local).

        A refused connection is an outage at once. A single timeout is not: a loop
        stalled by load fires the timer before it reads a reply that came in time, and
        taking that for an outage would lift the cluster limit exactly when it matters;
        only `retry_after_s` without any answer is."""
        if not isinstance(error, (TimeoutError, RedisTimeoutError)):
            self._failed(error)
            return True
        now = time.monotonic()
        if self._silent_since is None:
            self._silent_since = now
        if now - self._silent_since < self.retry_after_s:
            return False
        self._failed(TimeoutError(f"no answer for {now - self._silent_since:.1f} s"))
        return True

    def _failed(self, error: BaseException) -> None:
        if not self._outage:
            log.warning("cluster slots of %s: Redis unavailable (%r), runs take local slots only until it answers",
                        self.provider, error)
        self._outage = True
        self._down_until = time.monotonic() + self.retry_after_s

    def _answered(self) -> None:
        self._silent_since = None
        if self._outage:
            log.info("cluster slots of %s: Redis answers again, the cluster limit applies", self.provider)
            self._outage = False

    def _forget_in_redis(self, lease_id: str, ticket: str) -> None:
        async def leave() -> None:
            try:
                async with asyncio.timeout(REDIS_TIMEOUT_S):
                    await self._leave(keys=[self.keys["leases"], self.keys["queue"], self.keys["queue_expiry"]],
                                      args=[lease_id, ticket])
            except REDIS_FAILURES:
                pass  # it expires by itself
            finally:
                self.wake()

        task = asyncio.get_running_loop().create_task(leave())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl_s / 3)
            if not self.held or self._skipping_redis():
                continue
            try:
                async with asyncio.timeout(REDIS_TIMEOUT_S):
                    await self._renew(keys=[self.keys["leases"]],
                                      args=[repr(self.lease_ttl_s), self._key_ttl_s, *self.held])
            except REDIS_FAILURES as error:
                self._outage_after(error)
            else:
                self._answered()
