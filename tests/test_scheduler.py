"""Scheduler order: priority, then round-robin across tenants, deadlines, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from app.core.scheduler import Scheduler, SlotUnavailable


async def run_order(scheduler: Scheduler, requests: list[tuple[str, str]]) -> list[str]:
    order: list[str] = []
    gate = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def blocker() -> None:
        async with scheduler.slot(tenant_id="x", priority="standard", deadline=loop.time() + 10):
            await gate.wait()

    async def job(name: str, tenant: str, priority: str) -> None:
        async with scheduler.slot(tenant_id=tenant, priority=priority, deadline=loop.time() + 10):  # type: ignore[arg-type]
            order.append(name)
            await asyncio.sleep(0)

    holder = asyncio.create_task(blocker())
    await asyncio.sleep(0)
    tasks = []
    for index, (tenant, priority) in enumerate(requests):
        tasks.append(asyncio.create_task(job(f"{tenant}{index}", tenant, priority)))
        await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(holder, *tasks)
    return order


async def test_high_priority_goes_first_then_tenants_take_turns() -> None:
    order = await run_order(Scheduler(1), [("a", "standard"), ("a", "standard"), ("a", "standard"),
                                           ("b", "standard"), ("c", "high")])
    assert order == ["c4", "a0", "b3", "a1", "a2"]


async def test_deadline_gives_up_and_frees_the_queue_entry() -> None:
    scheduler = Scheduler(1)
    loop = asyncio.get_running_loop()
    async with scheduler.slot(tenant_id="a", priority="standard", deadline=loop.time() + 1):
        with pytest.raises(SlotUnavailable) as raised:
            async with scheduler.slot(tenant_id="b", priority="high", deadline=loop.time() + 0.05):
                pass
        assert raised.value.reason == "deadline"
        assert scheduler.queue_depth == 0
    assert scheduler.running == 0


async def test_full_queue_refuses_at_once() -> None:
    scheduler = Scheduler(1, queue_max_size=1)
    loop = asyncio.get_running_loop()
    async with scheduler.slot(tenant_id="a", priority="standard", deadline=loop.time() + 1):
        waiting = asyncio.create_task(
            scheduler.slot(tenant_id="a", priority="standard", deadline=loop.time() + 5).__aenter__()
        )
        await asyncio.sleep(0)
        with pytest.raises(SlotUnavailable) as raised:
            async with scheduler.slot(tenant_id="b", priority="standard", deadline=loop.time() + 5):
                pass
        assert raised.value.reason == "queue_full"
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    assert scheduler.queue_depth == 0 and scheduler.running == 0


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    scheduler = Scheduler(1)
    loop = asyncio.get_running_loop()
    async with scheduler.slot(tenant_id="a", priority="standard", deadline=loop.time() + 5):
        task = asyncio.create_task(
            scheduler.slot(tenant_id="b", priority="standard", deadline=loop.time() + 5).__aenter__()
        )
        await asyncio.sleep(0)
        assert scheduler.queue_depth == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert scheduler.queue_depth == 0
    assert scheduler.running == 0
    async with scheduler.slot(tenant_id="c", priority="standard", deadline=loop.time() + 0.1):
        assert scheduler.running == 1


async def test_a_hopeless_wait_is_refused_at_once() -> None:
    scheduler = Scheduler(1)
    loop = asyncio.get_running_loop()
    async with scheduler.slot(tenant_id="a", priority="standard", deadline=loop.time() + 1):
        pass
    scheduler.average_hold_s = 1.0  # runs hold a slot for a second
    async with scheduler.slot(tenant_id="a", priority="standard", deadline=loop.time() + 5):
        started = loop.time()
        with pytest.raises(SlotUnavailable) as raised:
            async with scheduler.slot(tenant_id="b", priority="standard", deadline=loop.time() + 0.5):
                pass
        assert raised.value.reason == "predicted_wait"
        assert loop.time() - started < 0.4, "refused without waiting out the deadline"
