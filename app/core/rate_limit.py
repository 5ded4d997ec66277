"""Per-tenant and per-user request budgets (the `limits` library, moving windows).

Buckets are keyed by tenant and by tenant+user from the token, so one business's burst
never spends another's budget. With REDIS_URL the windows live in Redis and every
replica draws from the same budget.
"""

from __future__ import annotations

import math
import time

from limits import parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from app.core.auth import Principal
from app.core.errors import RateLimited


def limits_storage(redis_url: str | None) -> Storage:
    if redis_url is None:
        return MemoryStorage()
    return RedisStorage("async+" + redis_url, implementation="redispy", key_prefix="crm:ratelimit")


class RequestRateLimiter:
    def __init__(self, storage: Storage, *, per_tenant: str, per_user: str) -> None:
        self._limiter = MovingWindowRateLimiter(storage)
        self._tenant = parse(per_tenant)
        self._user = parse(per_user)

    async def check(self, principal: Principal, cost: int = 1) -> None:
        """Spends `cost` from both budgets, or raises `RateLimited` with a Retry-After."""
        buckets = (
            (self._tenant, ("tenant", principal.tenant_id), "tenant"),
            (self._user, ("user", principal.tenant_id, principal.user_id), "user"),
        )
        # Test both before spending either, so a request refused by one budget costs nothing.
        for limit, keys, scope in buckets:
            if not await self._limiter.test(limit, *keys, cost=cost):
                stats = await self._limiter.get_window_stats(limit, *keys)
                retry_after = max(1, math.ceil(stats.reset_time - time.time()))
                raise RateLimited(f"{scope} rate limit of {limit} exceeded", retry_after_s=retry_after)
        for limit, keys, _ in buckets:
            await self._limiter.hit(limit, *keys, cost=cost)
