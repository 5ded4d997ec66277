"""Per-tenant and per-user request budgets (the `limits` library, sliding window counters).

Buckets are keyed by tenant and by tenant+user from the token, so one business's burst
never spends another's budget. With REDIS_URL the windows live in Redis and every
replica draws from the same budget; while Redis cannot be reached, each process falls
back to its own in-memory windows (limits stay enforced per replica) and goes back to
Redis by itself on the next request that reaches it.

Each check is one atomic `hit` per bucket (a Lua script in Redis, a per-key lock in
memory): testing first and hitting after let concurrent requests overshoot. The user's
bucket is hit first, so a user over their own limit never spends the tenant's budget.

A sliding window counter (this window's count plus the last window's, weighted by how
much of it still overlaps) rather than a moving window of every hit's timestamp: the
moving window's in-memory storage sweeps expired hits while holding the key's lock
across a thread-pool call, and starts that sweep again on almost every hit, so a burst
of one tenant's requests queued on the lock. 500 streams opened at once waited p50 2 s,
p95 7.6 s for their rate-limit check, most of their time to first event (bench). The
counter costs two numbers per bucket, in memory and in Redis, however high the limit.
It is exact within a window and approximate across its edge (README, Security): a burst
straddling it can get a few more through, and at worst a client can pass twice the limit
in a rolling window by spending a whole budget at the end of one window and the next.
"""

from __future__ import annotations

import logging
import math
import time

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from redis.asyncio import ConnectionPool

from app.core.auth import Principal
from app.core.errors import BatchTooLarge, RateLimited

log = logging.getLogger(__name__)


def redis_limits_storage(redis_url: str, pool: ConnectionPool) -> Storage:
    """Shares the service's one Redis connection pool (a private pool of its own ran out
    of connections under load)."""
    return RedisStorage(
        "async+" + redis_url, implementation="redispy", key_prefix="crm:ratelimit",
        wrap_exceptions=True, connection_pool=pool,
    )


class RequestRateLimiter:
    def __init__(self, storage: Storage | None, *, per_tenant: str, per_user: str) -> None:
        self._shared = SlidingWindowCounterRateLimiter(storage) if storage is not None else None
        self._local = SlidingWindowCounterRateLimiter(MemoryStorage())
        self._tenant = parse(per_tenant)
        self._user = parse(per_user)

    async def _hit(
        self, limit: RateLimitItem, keys: tuple[str, ...], cost: int
    ) -> tuple[bool, SlidingWindowCounterRateLimiter]:
        if self._shared is not None:
            try:
                return await self._shared.hit(limit, *keys, cost=cost), self._shared
            except StorageError as error:
                log.warning("shared rate limits unavailable, using this process's: %r", error)
        return await self._local.hit(limit, *keys, cost=cost), self._local

    async def check(self, principal: Principal, cost: int = 1) -> None:
        """Spends `cost` from the user's budget, then the tenant's, or raises `RateLimited`.

        A cost larger than a whole window of either budget (a batch of more inputs than
        the limit allows a minute) could never be spent: it is refused with
        `BatchTooLarge`, spending nothing, not with a 429 inviting retries for ever."""
        buckets = (
            (self._user, ("user", principal.tenant_id, principal.user_id), "user"),
            (self._tenant, ("tenant", principal.tenant_id), "tenant"),
        )
        for limit, _, scope in buckets:
            if cost > limit.amount:
                raise BatchTooLarge(f"{cost} inputs exceed the {scope} rate limit of {limit}: send them in parts")
        for limit, keys, scope in buckets:
            allowed, limiter = await self._hit(limit, keys, cost)
            if not allowed:
                retry_after = 1
                try:
                    stats = await limiter.get_window_stats(limit, *keys)
                    retry_after = max(1, math.ceil(stats.reset_time - time.time()))
                except StorageError:
                    pass
                raise RateLimited(f"{scope} rate limit of {limit} exceeded", retry_after_s=retry_after)
