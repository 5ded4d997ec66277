"""Each tenant's data keys, unwrapped once and kept in memory for a short while.

The wrapped keys live in a `DataKeyStore` (the database: `app.store.data_keys`; Redis:
`app.realtime.redis_data_keys`), so every replica and every backup holds only wrapped
keys. A replica re-reads a tenant's keys after `ttl_s`. Three rules keep replicas that
read at different moments in agreement:

- **A new version seals only once every replica can open it.** A key version added by a
  rotation is loaded for opening at once but used for sealing only `ttl_s` after it was
  created, when every replica's cache has read it.
- **Versions are never reused.** Destroying a tenant's keys (its erasure) leaves a
  tombstone per version, so a key made later for the same tenant id gets a new version
  number: a record sealed under a destroyed key can never be taken for one of the new key.
- **A load that raced an erasure is not cached.**
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from app.crypto.envelope import DecryptionFailed, MasterKeys, TenantCipher, new_data_key

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WrappedKey:
    tenant_id: str
    version: int
    master_key_id: str
    wrapped: bytes  # empty: destroyed (a tombstone that keeps the version number taken)
    created_at: float  # Unix time

    @property
    def destroyed(self) -> bool:
        return not self.wrapped


class DataKeyStore(Protocol):
    async def load(self, tenant_id: str) -> list[WrappedKey]: ...

    async def create(self, key: WrappedKey) -> bool:
        """Inserts the key unless that tenant and version exist (another replica won)."""

    async def all_keys(self) -> list[WrappedKey]: ...

    async def rewrap(self, old: WrappedKey, new: WrappedKey) -> bool:
        """Replaces `old` by `new` only if the stored key is still `old` (not destroyed
        or re-wrapped meanwhile)."""

    async def destroy(self, tenant_id: str) -> int:
        """Turns every live key of the tenant into a tombstone; returns how many."""


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
        self._generations: dict[str, int] = {}  # bumped by `forget`: a load that started before is stale

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
        generation = self._generations.get(tenant_id, 0)
        stored = await self.store.load(tenant_id)
        if not any(not key.destroyed for key in stored):
            await self._create(tenant_id, max((key.version for key in stored), default=0) + 1)
            stored = await self.store.load(tenant_id)
        live = [key for key in stored if not key.destroyed]
        keys = {key.version: self.masters.unwrap(tenant_id, key.version, key.master_key_id, key.wrapped)
                for key in live}
        settled = [key.version for key in live if key.created_at <= time.time() - self.ttl_s]
        cipher = TenantCipher(tenant_id, keys, sealing_version=max(settled) if settled else min(keys))
        if self._generations.get(tenant_id, 0) == generation:
            self._ciphers[tenant_id] = (time.monotonic() + self.ttl_s, cipher)
            self._ciphers.move_to_end(tenant_id)
            while len(self._ciphers) > self._max_tenants:
                self._ciphers.popitem(last=False)
        return cipher

    async def _create(self, tenant_id: str, version: int) -> bool:
        master_key_id, wrapped = self.masters.wrap(tenant_id, version, new_data_key())
        return await self.store.create(WrappedKey(tenant_id, version, master_key_id, wrapped, time.time()))

    async def add_version(self, tenant_id: str) -> int:
        """A new data key for the tenant's new records (sealing with it starts `ttl_s`
        later, see the module's docstring); older records keep their key."""
        while True:
            current = max((key.version for key in await self.store.load(tenant_id)), default=0)
            if await self._create(tenant_id, current + 1):
                self.forget(tenant_id)
                return current + 1

    async def rewrap_all(self) -> int:
        """Wraps every live data key under the current master key (after DATA_ENCRYPTION_KEY
        changed and the old one moved to DATA_ENCRYPTION_OLD_KEYS). Records are untouched.
        A key destroyed meanwhile stays destroyed (compare-and-swap)."""
        rewrapped = 0
        current = self.masters.current.key_id
        for key in await self.store.all_keys():
            if key.destroyed or key.master_key_id == current:
                continue
            try:
                data_key = self.masters.unwrap(key.tenant_id, key.version, key.master_key_id, key.wrapped)
            except DecryptionFailed as error:  # a forged or damaged row: report it, rotate the rest
                log.error("data key left as it is: %s", error)
                continue
            master_key_id, wrapped = self.masters.wrap(key.tenant_id, key.version, data_key)
            new = WrappedKey(key.tenant_id, key.version, master_key_id, wrapped, key.created_at)
            rewrapped += await self.store.rewrap(key, new)
        return rewrapped

    async def rotate(self, *, new_data_keys: bool) -> tuple[int, int]:
        """Re-wraps every data key under the current master key and, when asked, starts a
        new data key version for every tenant. Returns (re-wrapped, new versions)."""
        rewrapped = await self.rewrap_all()
        tenants = {key.tenant_id for key in await self.store.all_keys() if not key.destroyed} if new_data_keys else set()
        for tenant_id in sorted(tenants):
            await self.add_version(tenant_id)
        return rewrapped, len(tenants)

    async def shred(self, tenant_id: str) -> int:
        """Destroys the tenant's data keys: every record sealed with them, in the database,
        in Redis and in any backup without the key table, becomes unreadable."""
        self.forget(tenant_id)
        destroyed = await self.store.destroy(tenant_id)
        self.forget(tenant_id)
        return destroyed

    def forget(self, tenant_id: str) -> None:
        self._generations[tenant_id] = self._generations.get(tenant_id, 0) + 1
        self._ciphers.pop(tenant_id, None)
