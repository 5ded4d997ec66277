"""Sentiment alerts: a sharp drop between a customer's consecutive interactions.

The previous score per tenant and customer lives where replicas share it (Redis when
configured), so a drop is noticed whichever replica analysed each message.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

SHARP_DROP = 0.6


class SentimentHistory(Protocol):
    async def swap(self, tenant_id: str, customer_id: str, score: float) -> float | None:
        """Stores `score` and returns the previous one."""

    async def erase(self, tenant_id: str, customer_id: str | None = None) -> int:
        """Forgets the customer's last score, or every customer's of the tenant."""


class InMemorySentimentHistory:
    def __init__(self, max_customers: int = 100_000) -> None:
        self._scores: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._max = max_customers

    async def swap(self, tenant_id: str, customer_id: str, score: float) -> float | None:
        key = (tenant_id, customer_id)
        previous = self._scores.pop(key, None)
        self._scores[key] = score
        if len(self._scores) > self._max:
            self._scores.popitem(last=False)
        return previous

    async def erase(self, tenant_id: str, customer_id: str | None = None) -> int:
        keys = [key for key in self._scores if key[0] == tenant_id and customer_id in (None, key[1])]
        for key in keys:
            del self._scores[key]
        return len(keys)


class RedisSentimentHistory:
    TTL_S = 30 * 24 * 3600

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def swap(self, tenant_id: str, customer_id: str, score: float) -> float | None:
        """None while Redis is away too: no alert is better than a failed analysis."""
        try:
            previous = await self.redis.set(
                f"crm:sentiment:{tenant_id}:{customer_id}", score, ex=self.TTL_S, get=True
            )
        except (RedisError, OSError) as error:
            log.warning("sentiment history unavailable: %r", error)
            return None
        return float(previous) if previous is not None else None

    async def erase(self, tenant_id: str, customer_id: str | None = None) -> int:
        """Fails loudly when Redis is away: an erasure is never reported done when it was not."""
        if customer_id is not None:
            return int(await self.redis.delete(f"crm:sentiment:{tenant_id}:{customer_id}"))
        keys = [key async for key in self.redis.scan_iter(match=f"crm:sentiment:{tenant_id}:*", count=500)]
        return int(await self.redis.delete(*keys)) if keys else 0


def sentiment_alert(previous: float | None, current: dict[str, Any]) -> dict[str, Any] | None:
    if previous is None:
        return None
    drop = previous - float(current["score"])
    if drop < SHARP_DROP:
        return None
    return {
        "kind": "sentiment_drop",
        "previous_score": previous,
        "score": current["score"],
        "label": current["label"],
        "drop": round(drop, 4),
    }
