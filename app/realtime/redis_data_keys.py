"""Tenants' wrapped data keys in Redis, for the values kept in Redis (events, cache).

Each store keeps the keys of its own data: replicas that share Redis open each
other's events and cache entries whatever database each uses, and a flushed Redis
loses its keys together with the only data they protected. Erasure deletes both.
"""

from __future__ import annotations

import base64

from redis.asyncio import Redis

from app.crypto.keyring import WrappedKey

KEY_PREFIX = "crm:keys:"


def _encode(key: WrappedKey) -> str:
    return f"{key.master_key_id}:{base64.b64encode(key.wrapped).decode()}"


def _decode(tenant_id: str, version: bytes | str, value: bytes | str) -> WrappedKey:
    text = value.decode() if isinstance(value, bytes) else value
    master_key_id, _, wrapped = text.partition(":")
    return WrappedKey(tenant_id, int(version), master_key_id, base64.b64decode(wrapped))


class RedisDataKeyStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def load(self, tenant_id: str) -> list[WrappedKey]:
        stored = await self.redis.hgetall(KEY_PREFIX + tenant_id)
        return [_decode(tenant_id, version, value) for version, value in stored.items()]

    async def create(self, key: WrappedKey) -> bool:
        return bool(await self.redis.hsetnx(KEY_PREFIX + key.tenant_id, str(key.version), _encode(key)))

    async def all_keys(self) -> list[WrappedKey]:
        found = []
        async for name in self.redis.scan_iter(match=KEY_PREFIX + "*", count=500):
            tenant_id = (name.decode() if isinstance(name, bytes) else name)[len(KEY_PREFIX):]
            found.extend(await self.load(tenant_id))
        return found

    async def rewrap(self, key: WrappedKey) -> None:
        await self.redis.hset(KEY_PREFIX + key.tenant_id, str(key.version), _encode(key))

    async def destroy(self, tenant_id: str) -> int:
        return int(await self.redis.delete(KEY_PREFIX + tenant_id))
