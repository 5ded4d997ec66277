"""Tenants' wrapped data keys in the database (the keyring's `DataKeyStore`).

Only wrapped keys are stored: reading this table without the master key yields nothing.
A destroyed key keeps its row with nothing in it, so its version is never reused.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.crypto.keyring import WrappedKey
from app.store.database import tenant_data_keys as keys

DESTROYED = "destroyed"


def _wrapped(row: Any) -> WrappedKey:
    return WrappedKey(row.tenant_id, row.version, row.master_key_id, bytes(row.wrapped), row.created_at.timestamp())


def _this(key: WrappedKey) -> Any:
    return (keys.c.tenant_id == key.tenant_id) & (keys.c.version == key.version)


class SqlDataKeyStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def load(self, tenant_id: str) -> list[WrappedKey]:
        async with self.engine.connect() as connection:
            rows = (await connection.execute(select(keys).where(keys.c.tenant_id == tenant_id))).all()
        return [_wrapped(row) for row in rows]

    async def create(self, key: WrappedKey) -> bool:
        try:
            async with self.engine.begin() as connection:
                await connection.execute(insert(keys).values(
                    tenant_id=key.tenant_id, version=key.version, master_key_id=key.master_key_id,
                    wrapped=key.wrapped, created_at=datetime.fromtimestamp(key.created_at, UTC),
                ))
        except IntegrityError:
            return False  # another replica created this version first: use theirs
        return True

    async def all_keys(self) -> list[WrappedKey]:
        async with self.engine.connect() as connection:
            return [_wrapped(row) for row in (await connection.execute(select(keys))).all()]

    async def rewrap(self, old: WrappedKey, new: WrappedKey) -> bool:
        async with self.engine.begin() as connection:
            result = await connection.execute(
                update(keys).where(_this(old) & (keys.c.master_key_id == old.master_key_id) & (keys.c.wrapped == old.wrapped))
                .values(master_key_id=new.master_key_id, wrapped=new.wrapped)
            )
        return result.rowcount == 1

    async def destroy(self, tenant_id: str) -> int:
        async with self.engine.begin() as connection:
            result = await connection.execute(
                update(keys).where((keys.c.tenant_id == tenant_id) & (keys.c.master_key_id != DESTROYED))
                .values(master_key_id=DESTROYED, wrapped=b"")
            )
        return result.rowcount
