"""Tenant-scoped cache of finished analyses, for answering under overload.

Lookup is exact first (same normalised text, channel and tier), then semantic: the
most similar cached message of the same tenant by WordLlama embedding, if its cosine
similarity clears `SIMILARITY_THRESHOLD`. Entries never cross tenants: the tenant is
part of every key and every semantic search runs over that tenant's entries only.

`InMemoryAnalysisCache` serves one replica; `RedisAnalysisCache` is shared by all.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from redis.asyncio import Redis

from chains.embeddings import embed_one

SIMILARITY_THRESHOLD = 0.9
MAX_ENTRIES_PER_TENANT = 500
_SPACES = re.compile(r"\s+")


def cache_key(payload: dict[str, Any]) -> str:
    text = _SPACES.sub(" ", str(payload["text"]).strip().lower())
    material = f"{payload['channel']}|{payload.get('customer_tier', 'standard')}|{text}"
    return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class CacheHit:
    kind: Literal["exact", "similar"]
    similarity: float
    output: dict[str, Any]


class AnalysisCache(Protocol):
    async def get(self, tenant_id: str, payload: dict[str, Any]) -> CacheHit | None: ...

    async def put(self, tenant_id: str, payload: dict[str, Any], output: dict[str, Any]) -> None: ...


def _best_similar(
    query: np.ndarray, entries: list[tuple[np.ndarray, dict[str, Any]]]
) -> CacheHit | None:
    if not entries:
        return None
    matrix = np.stack([vector for vector, _ in entries])
    similarity = matrix @ query
    best = int(np.argmax(similarity))
    if float(similarity[best]) < SIMILARITY_THRESHOLD:
        return None
    return CacheHit("similar", round(float(similarity[best]), 4), entries[best][1])


class InMemoryAnalysisCache:
    def __init__(self, max_entries_per_tenant: int = MAX_ENTRIES_PER_TENANT) -> None:
        self._tenants: dict[str, OrderedDict[str, tuple[np.ndarray, dict[str, Any]]]] = {}
        self._max = max_entries_per_tenant

    async def get(self, tenant_id: str, payload: dict[str, Any]) -> CacheHit | None:
        entries = self._tenants.get(tenant_id)
        if not entries:
            return None
        exact = entries.get(cache_key(payload))
        if exact is not None:
            return CacheHit("exact", 1.0, exact[1])
        return _best_similar(embed_one(payload["text"]), list(entries.values()))

    async def put(self, tenant_id: str, payload: dict[str, Any], output: dict[str, Any]) -> None:
        entries = self._tenants.setdefault(tenant_id, OrderedDict())
        key = cache_key(payload)
        entries[key] = (embed_one(payload["text"]), output)
        entries.move_to_end(key)
        while len(entries) > self._max:
            entries.popitem(last=False)


class RedisAnalysisCache:
    """Per tenant: a hash of key → entry and a sorted set of keys by time, for eviction."""

    TTL_S = 24 * 3600

    def __init__(self, redis: Redis, max_entries_per_tenant: int = MAX_ENTRIES_PER_TENANT) -> None:
        self.redis = redis
        self._max = max_entries_per_tenant

    @staticmethod
    def _keys(tenant_id: str) -> tuple[str, str]:
        return f"crm:cache:{tenant_id}:analyses", f"crm:cache:{tenant_id}:order"

    async def get(self, tenant_id: str, payload: dict[str, Any]) -> CacheHit | None:
        entries_key, _ = self._keys(tenant_id)
        exact = await self.redis.hget(entries_key, cache_key(payload))
        if exact is not None:
            return CacheHit("exact", 1.0, json.loads(exact)["output"])
        raw = await self.redis.hvals(entries_key)
        entries = [
            (np.frombuffer(bytes.fromhex(entry["embedding"]), dtype=np.float32), entry["output"])
            for entry in map(json.loads, raw)
        ]
        return _best_similar(embed_one(payload["text"]), entries)

    async def put(self, tenant_id: str, payload: dict[str, Any], output: dict[str, Any]) -> None:
        entries_key, order_key = self._keys(tenant_id)
        key = cache_key(payload)
        entry = json.dumps({"embedding": embed_one(payload["text"]).tobytes().hex(), "output": output})
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(entries_key, key, entry)
            pipe.zadd(order_key, {key: time.time()})
            pipe.zrange(order_key, 0, -self._max - 1)
            pipe.expire(entries_key, self.TTL_S)
            pipe.expire(order_key, self.TTL_S)
            _, _, stale, _, _ = await pipe.execute()
        if stale:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hdel(entries_key, *stale)
                pipe.zrem(order_key, *stale)
                await pipe.execute()
