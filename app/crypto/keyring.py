"""Each tenant's data keys, unwrapped once and kept in memory for a short while.

The wrapped keys live in a `DataKeyStore` (the database: `app.store.data_keys`), so
every replica and every backup holds only wrapped keys. A replica re-reads a tenant's
keys after `ttl_s`: a data key version added elsewhere (rotation) serves new writes
here within that time, and a tenant erased elsewhere stops being readable here too.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from app.crypto.envelope import MasterKeys, TenantCipher, new_data_key


@dataclass(frozen=True, slots=True)
class WrappedKey:
    tenant_id: str
    version: int
    master_key_id: str
    wrapped: bytes


class DataKeyStore(Protocol):
    async def load(self, tenant_id: str) -> list[WrappedKey]: ...

    async def create(self, key: WrappedKey) -> bool:
        """Inserts the key unless that tenant and version exist (another replica won)."""

    async def all_keys(self) -> list[WrappedKey]: ...

    async def rewrap(self, key: WrappedKey) -> None: ...

    async def destroy(self, tenant_id: str) -> int: ...


class Keyring:
    def __init__(self, masters: MasterKeys | Callable[[], MasterKeys], store: DataKeyStore, *,
                 ttl_s: float = 60.0, max_tenants: int = 10_000) -> None:
        """`masters` may be a function, called at first use: building the service reads
        no secret file (a development key is generated at the first start, not at import)."""
        self._masters = masters if callable(masters) else (lambda: masters)
        self.store = store
        self.ttl_s = ttl_s
        self._max_tenants = max_tenants
        self._ciphers: OrderedDict[str, tuple[float, TenantCipher]] = OrderedDict()
        self._loads: dict[str, asyncio.Future[TenantCipher]] = {}

    @functools.cached_property
    def masters(self) -> MasterKeys:
        return self._masters()

    async def cipher(self, tenant_id: str) -> TenantCipher:
        """The tenant's cipher: a dict lookup when fresh, one read when not (however many
        ask at once), and a first data key created when the tenant has none."""
        cached = self._ciphers.get(tenant_id)
        if cached is not None and cached[0] > time.monotonic():
            self._ciphers.move_to_end(tenant_id)
            return cached[1]
        load = self._loads.get(tenant_id)
        if load is None:
            load = asyncio.ensure_future(self._load(tenant_id))
            self._loads[tenant_id] = load
            load.add_done_callback(lambda _: self._loads.pop(tenant_id, None))
        return await asyncio.shield(load)

    async def _load(self, tenant_id: str) -> TenantCipher:
        stored = await self.store.load(tenant_id)
        if not stored:
            await self._create(tenant_id, 1)
            stored = await self.store.load(tenant_id)
        keys = {key.version: self.masters.unwrap(tenant_id, key.version, key.master_key_id, key.wrapped)
                for key in stored}
        cipher = TenantCipher(tenant_id, keys)
        self._ciphers[tenant_id] = (time.monotonic() + self.ttl_s, cipher)
        self._ciphers.move_to_end(tenant_id)
        while len(self._ciphers) > self._max_tenants:
            self._ciphers.popitem(last=False)
        return cipher

    async def _create(self, tenant_id: str, version: int) -> bool:
        master_key_id, wrapped = self.masters.wrap(tenant_id, version, new_data_key())
        return await self.store.create(WrappedKey(tenant_id, version, master_key_id, wrapped))

    async def add_version(self, tenant_id: str) -> int:
        """A new data key for the tenant's new writes; older records keep their key."""
        while True:
            current = max((key.version for key in await self.store.load(tenant_id)), default=0)
            if await self._create(tenant_id, current + 1):
                self.forget(tenant_id)
                return current + 1

    async def rewrap_all(self) -> int:
        """Wraps every data key under the current master key (after DATA_ENCRYPTION_KEY
        changed and the old one moved to DATA_ENCRYPTION_OLD_KEYS). Records are untouched."""
        rewrapped = 0
        for key in await self.store.all_keys():
            if key.master_key_id == self.masters.current.key_id:
                continue
            data_key = self.masters.unwrap(key.tenant_id, key.version, key.master_key_id, key.wrapped)
            master_key_id, wrapped = self.masters.wrap(key.tenant_id, key.version, data_key)
            await self.store.rewrap(WrappedKey(key.tenant_id, key.version, master_key_id, wrapped))
            rewrapped += 1
        return rewrapped

    async def rotate(self, *, new_data_keys: bool) -> tuple[int, int]:
        """Re-wraps every data key under the current master key and, when asked, starts a
        new data key version for every tenant. Returns (re-wrapped, new versions)."""
        rewrapped = await self.rewrap_all()
        tenants = {key.tenant_id for key in await self.store.all_keys()} if new_data_keys else set()
        for tenant_id in sorted(tenants):
            await self.add_version(tenant_id)
        return rewrapped, len(tenants)

    async def shred(self, tenant_id: str) -> int:
        """Destroys the tenant's data keys: every record sealed with them, in the database,
        in Redis and in any backup, becomes unreadable."""
        destroyed = await self.store.destroy(tenant_id)
        self.forget(tenant_id)
        return destroyed

    def forget(self, tenant_id: str) -> None:
        self._ciphers.pop(tenant_id, None)
