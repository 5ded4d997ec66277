"""Runs shared by concurrent callers never answer with a result from before the call."""

from __future__ import annotations

import asyncio

from app.store.coalesced_runs import CoalescedRuns


class Store:
    """A value that writes change, and reads the test can hold open."""

    def __init__(self) -> None:
        self.value = 0
        self.reads = 0
        self.gate: asyncio.Event | None = None
        self.fail = False

    async def read(self, _key: str) -> int:
        self.reads += 1
        seen = self.value  # what the database returned
        if self.gate is not None:
            await self.gate.wait()  # the result is still on its way back
        if self.fail:
            raise RuntimeError("database blinked")
        return seen


async def a_write_during_a_read() -> tuple[Store, CoalescedRuns[str, int], asyncio.Future[int]]:
    """A read under way has seen the value 0 and is held open; then a write commits 1."""
    store = Store()
    reads = CoalescedRuns(store.read, name="read")
    store.gate = asyncio.Event()
    before = asyncio.ensure_future(reads.get("t"))
    while store.reads == 0:
        await asyncio.sleep(0)
    store.value = 1
    return store, reads, before


async def test_a_caller_after_a_write_never_gets_the_read_under_way() -> None:
    store, reads, before = await a_write_during_a_read()
    after = [asyncio.ensure_future(reads.get("t")) for _ in range(20)]
    await asyncio.sleep(0)
    assert store.gate is not None
    store.gate.set()
    assert await before == 0
    assert await asyncio.gather(*after) == [1] * 20, "the callers after the write share one later read"
    assert store.reads == 2


async def test_a_failed_read_fails_its_callers_and_the_next_call_reads_again() -> None:
    store = Store()
    reads = CoalescedRuns(store.read, name="read")
    store.fail = True
    outcomes = await asyncio.gather(*(reads.get("t") for _ in range(5)), return_exceptions=True)
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes), outcomes
    store.fail = False
    assert await reads.get("t") == 0


async def test_a_caller_that_leaves_does_not_cancel_the_read_for_the_others() -> None:
    store, reads, first = await a_write_during_a_read()
    # Both arrive while the first read is under way: they share the next one.
    leaving, staying = asyncio.ensure_future(reads.get("t")), asyncio.ensure_future(reads.get("t"))
    await asyncio.sleep(0)
    leaving.cancel()
    assert store.gate is not None
    store.gate.set()
    assert await first == 0
    assert await staying == 1, "the shared read went on for the caller who stayed"
    assert leaving.cancelled() and store.reads == 2
