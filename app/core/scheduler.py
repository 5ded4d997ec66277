"""Slots for chain runs: bounded concurrency, priority first, then fair across tenants.

Waiters queue in two levels (high: `customer_tier=high_value` or `time_sensitive`;
standard). Within a level, tenants take turns (round-robin), and each tenant's own
requests keep their arrival order, so one tenant's flood cannot starve another's
single request. A waiter that cannot get a slot before its absolute deadline
(`loop.time()`) gives up with `SlotUnavailable`, and so does one that finds the queue
full: the caller then answers degraded instead of making the client wait.

A request whose predicted wait already passes its deadline gives up at once
(`predicted_wait`): the queue ahead of it divided among the slots, times the recent
average time a slot is held. Without this, overflow requests would wait out the whole
deadline only to be answered degraded anyway.

With a `ClusterSlots` (a limit shared by all replicas through Redis), every run also
holds a cluster lease for as long as its local slot. The local order still decides who
goes next in this process: a request takes a free local slot at once only if a lease is
free too; otherwise it queues, and one pump task per scheduler waits for leases and hands
each to whoever is first in the local order at that moment. Handing leases out in order,
rather than letting each local slot holder wait for a lease of its own, is what keeps a
high-priority arrival ahead of standard runs that are only waiting for the cluster. A
released lease goes back to Redis rather than to the next local waiter, so a saturated
replica cannot keep the cluster's slots from the others.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Literal

from app.core.cluster_slots import ClusterSlots, Lease

Priority = Literal["high", "standard"]
_LEVELS: tuple[Priority, ...] = ("high", "standard")


class SlotUnavailable(Exception):
    def __init__(self, reason: Literal["deadline", "queue_full", "predicted_wait"]) -> None:
        super().__init__(reason)
        self.reason = reason


class Scheduler:
    def __init__(
        self,
        max_concurrency: int,
        *,
        queue_max_size: int = 1_000,
        on_change: Callable[[int, int], None] | None = None,
        cluster: ClusterSlots | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.max_concurrency = max_concurrency
        self.queue_max_size = queue_max_size
        self.running = 0
        self._queues: dict[Priority, OrderedDict[str, deque[asyncio.Future[Lease | None]]]] = {
            level: OrderedDict() for level in _LEVELS
        }
        self._waiting = 0
        self._on_change = on_change or (lambda waiting, running: None)
        self.average_hold_s: float | None = None  # EWMA of how long runs keep a slot
        self.cluster = cluster
        self._pump: asyncio.Task[None] | None = None

    @property
    def queue_depth(self) -> int:
        return self._waiting

    @asynccontextmanager
    async def slot(self, *, tenant_id: str, priority: Priority, deadline: float) -> AsyncIterator[None]:
        """Holds a slot for the body; raises `SlotUnavailable` when none comes in time.

        The only way in: every exit (a client leaving while queued included) frees what
        was taken, and the hold time feeds the wait prediction."""
        lease = await self._acquire(tenant_id=tenant_id, priority=priority, deadline=deadline)
        started = asyncio.get_running_loop().time()
        try:
            yield
        finally:
            self._release(lease, held_s=asyncio.get_running_loop().time() - started)

    async def close(self) -> None:
        """Stops the pump and the lease renewal; leases still held then expire in Redis."""
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
            self._pump = None
        if self.cluster is not None:
            await self.cluster.close()

    def _concurrency(self) -> int:
        # Cluster leases are shared with other replicas: this process gets at most all of them.
        if self.cluster is not None and self.cluster.available:
            return min(self.max_concurrency, self.cluster.limit)
        return self.max_concurrency

    def _predicted_start(self, priority: Priority, now: float) -> float:
        if self.average_hold_s is None:
            return now
        ahead = sum(len(q) for q in self._queues["high"].values())
        if priority == "standard":
            ahead = self._waiting
        rounds = (ahead + 1) / self._concurrency()
        return now + rounds * self.average_hold_s

    async def _acquire(self, *, tenant_id: str, priority: Priority, deadline: float) -> Lease | None:
        if self.running < self.max_concurrency and self._waiting == 0:
            self.running += 1
            self._notify()
            if self.cluster is None:
                return None
            # The local slot stays reserved while Redis answers: arrivals meanwhile queue.
            try:
                async with asyncio.timeout_at(deadline):
                    lease = await self.cluster.try_acquire()
            except BaseException as error:
                self._release(None)
                if isinstance(error, TimeoutError):
                    raise SlotUnavailable("deadline") from None
                raise
            if lease is not None:
                return lease
            self.running -= 1  # no cluster slot free: queue like everyone else
            self._notify()
            # Someone may have queued while Redis answered (the slot looked taken): with
            # the slot free again, the pump must look for a lease for them, whether or
            # not this request queues after all.
            self._pump_leases(wake=False)
        if self._waiting >= self.queue_max_size:
            raise SlotUnavailable("queue_full")
        loop = asyncio.get_running_loop()
        if self._predicted_start(priority, loop.time()) > deadline:
            raise SlotUnavailable("predicted_wait")
        waiter: asyncio.Future[Lease | None] = loop.create_future()
        self._queues[priority].setdefault(tenant_id, deque()).append(waiter)
        self._waiting += 1
        self._notify()
        self._pump_leases(wake=False)
        try:
            async with asyncio.timeout_at(deadline):
                return await waiter
        except BaseException as error:  # timeout, or the client went away
            if waiter.done() and not waiter.cancelled():
                self._release(waiter.result())  # granted at the same moment: hand the slot on
            else:
                waiter.cancel()
                self._forget(priority, tenant_id, waiter)
            if isinstance(error, TimeoutError):
                raise SlotUnavailable("deadline") from None
            raise

    def _forget(self, priority: Priority, tenant_id: str, waiter: asyncio.Future[Lease | None]) -> None:
        tenants = self._queues[priority]
        queue = tenants.get(tenant_id)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            self._waiting -= 1
            if not queue:
                del tenants[tenant_id]
        self._notify()
        self._pump_leases(wake=False)  # the pump stops asking at its next look when nobody waits

    def _release(self, lease: Lease | None, held_s: float | None = None) -> None:
        """Frees a slot and its lease; `held_s` (how long it was held) feeds the wait prediction."""
        if held_s is not None:
            previous = self.average_hold_s
            self.average_hold_s = held_s if previous is None else 0.8 * previous + 0.2 * held_s
        self.running -= 1
        if self.cluster is not None:
            if lease is not None:
                self.cluster.release(lease)
            self._notify()
            self._pump_leases()
            return
        waiter = self._next_waiter()
        if waiter is not None:
            self.running += 1
            waiter.set_result(None)
        self._notify()

    def _wants_lease(self) -> bool:
        return self._waiting > 0 and self.running < self.max_concurrency

    def _pump_leases(self, *, wake: bool = True) -> None:
        """Starts the pump when someone waits for a lease. A running pump looks again at
        once only on a release here (`wake`): arrivals and departures wait for its next
        look, so its Redis calls stay bounded by its backoff, not by the arrival rate."""
        if self.cluster is None:
            return
        if self._pump is None:
            if self._wants_lease():
                self._pump = asyncio.get_running_loop().create_task(self._pump_loop(self.cluster))
        elif wake:
            self.cluster.wake()

    async def _pump_loop(self, cluster: ClusterSlots) -> None:
        try:
            while self._wants_lease():
                lease = await cluster.acquire(self._wants_lease)
                if lease is None:
                    break
                waiter = self._next_waiter() if self.running < self.max_concurrency else None
                if waiter is None:  # everyone left while Redis answered
                    cluster.release(lease)
                    continue
                self.running += 1
                waiter.set_result(lease)
                self._notify()
        finally:
            self._pump = None

    def _next_waiter(self) -> asyncio.Future[Lease | None] | None:
        """Takes the next waiter out of the queue: high priority first, tenants in turn."""
        for level in _LEVELS:
            tenants = self._queues[level]
            while tenants:
                tenant_id, queue = next(iter(tenants.items()))
                waiter = queue.popleft()
                self._waiting -= 1
                if queue:
                    tenants.move_to_end(tenant_id)  # the next tenant goes first next time
                else:
                    del tenants[tenant_id]
                if not waiter.done():
                    return waiter
        return None

    def _notify(self) -> None:
        self._on_change(self._waiting, self.running)
