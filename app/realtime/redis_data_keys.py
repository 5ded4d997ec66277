"""Tenants' wrapped data keys in Redis, for the values kept in Redis (events, cache).

Each store keeps the keys of its own data: replicas that share Redis open each
other's events and cache entries whatever database each uses, and a flushed Redis
loses its keys together with the only data they protected. Erasure turns them into
tombstones, so a version is never reused. Redis must not evict them: run it with
`maxmemory-policy noeviction` (or without a memory limit), as `docker-compose.yml` does.
"""

from __future__ import annotations

import base64

from redis.asyncio import Redis

from app.crypto.keyring import WrappedKey

KEY_PREFIX = "crm:keys:"
DESTROYED = "destroyed"
# Compare-and-swap: a key destroyed or re-wrapped since it was read is left alone.
_REWRAP = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
"""
_DESTROY = """
local destroyed = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if string.sub(fields[i + 1], 1, #ARGV[1]) ~= ARGV[1] then
    local created = string.match(fields[i + 1], '^[^:]*:([^:]*):')
    redis.call('HSET', KEYS[1], fields[i], ARGV[1] .. ':' .. (created or '0') .. ':')
    destroyed = destroyed + 1
  end
end
return destroyed
"""


def _encode(key: WrappedKey) -> str:
    return f"{key.master_key_id}:{key.created_at}:{base64.b64encode(key.wrapped).decode()}"


def _decode(tenant_id: str, version: bytes | str, value: bytes | str) -> WrappedKey:
    text = value.decode() if isinstance(value, bytes) else value
    master_key_id, created_at, wrapped = text.split(":", 2)
    return WrappedKey(tenant_id, int(version), master_key_id, base64.b64decode(wrapped), float(created_at))


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

    async def rewrap(self, old: WrappedKey, new: WrappedKey) -> bool:
        swapped = await self.redis.eval(_REWRAP, 1, KEY_PREFIX + old.tenant_id, str(old.version),
                                        _encode(old), _encode(new))
        return bool(swapped)

    async def destroy(self, tenant_id: str) -> int:
        return int(await self.redis.eval(_DESTROY, 1, KEY_PREFIX + tenant_id, DESTROYED))
