"""Tenants' wrapped data keys in the database (the keyring's `DataKeyStore`).

Only wrapped keys are stored: reading this table without the master key yields nothing.
"""

from __future__ import annotations

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.crypto.keyring import WrappedKey
from app.store.audit import utcnow
from app.store.database import tenant_data_keys as keys


def _wrapped(row: object) -> WrappedKey:
    return WrappedKey(row.tenant_id, row.version, row.master_key_id, bytes(row.wrapped))  # type: ignore[attr-defined]


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
                    wrapped=key.wrapped, created_at=utcnow(),
                ))
        except IntegrityError:
            return False  # another replica created this version first: use theirs
        return True

    async def all_keys(self) -> list[WrappedKey]:
        async with self.engine.connect() as connection:
            return [_wrapped(row) for row in (await connection.execute(select(keys))).all()]

    async def rewrap(self, key: WrappedKey) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(
                update(keys).where((keys.c.tenant_id == key.tenant_id) & (keys.c.version == key.version))
                .values(master_key_id=key.master_key_id, wrapped=key.wrapped)
            )

    async def destroy(self, tenant_id: str) -> int:
        async with self.engine.begin() as connection:
            result = await connection.execute(delete(keys).where(keys.c.tenant_id == tenant_id))
        return result.rowcount
