"""Where the service's encryption keys come from (see `app.crypto` and README, Security):
the master key from the settings, the tenants' data keys from the store whose data they
protect, and the rotation command that re-wraps them."""

from __future__ import annotations

import functools

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.crypto.envelope import MasterKeys
from app.crypto.keyring import Keyring
from app.crypto.secret_file import load_or_create_secret
from app.realtime.redis_data_keys import RedisDataKeyStore
from app.store.data_keys import SqlDataKeyStore
from app.store.database import create_engine, database_url, migrate


def master_keys(settings: Settings) -> MasterKeys:
    """DATA_ENCRYPTION_KEY, or in development a key generated once beside the data
    (production refuses to start without the variable: see `Settings`)."""
    if settings.data_encryption_key is not None:
        current = settings.data_encryption_key.get_secret_value()
    else:
        current = load_or_create_secret(settings.encryption_key_file, what="development data encryption key")
    return MasterKeys(current, [key.get_secret_value() for key in settings.data_encryption_old_keys])


def keyring(settings: Settings, engine: AsyncEngine) -> Keyring:
    """Data keys for the database's records, kept in the database."""
    return Keyring(functools.cache(lambda: master_keys(settings)), SqlDataKeyStore(engine),
                   ttl_s=settings.data_key_cache_s)


def redis_keyring(keys: Keyring, redis: Redis, *, ttl_s: float = 60.0) -> Keyring:
    """Data keys for the values kept in Redis, kept in Redis, under the same master keys."""
    return Keyring(lambda: keys.masters, RedisDataKeyStore(redis), ttl_s=ttl_s)


async def key_rotation(settings: Settings, *, new_data_keys: bool) -> dict[str, tuple[int, int]]:
    """`python -m app keys rotate`: the database's keys, and Redis's when configured."""
    engine = create_engine(database_url(settings.database_url, settings.sqlite_path))
    keys = keyring(settings, engine)
    try:
        await migrate(engine)
        done = {"database": await keys.rotate(new_data_keys=new_data_keys)}
        if settings.redis_url:
            redis = Redis.from_url(settings.redis_url)
            try:
                done["redis"] = await redis_keyring(keys, redis).rotate(new_data_keys=new_data_keys)
            finally:
                await redis.aclose()
        return done
    finally:
        await engine.dispose()
