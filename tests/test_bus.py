"""The event bus contract, for the in-process bus and Redis Streams alike."""

from __future__ import annotations

import asyncio
from pathlib import Path
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from redis.asyncio import Redis

from app.core.config import Settings
from app.realtime.bus import EventBus, InProcessBus, SlowConsumer
from app.realtime.redis_bus import RedisStreamBus
from tests.support.servers import redis_server
from tests.support.stores import sqlite_keyring

SOCKET_TIMEOUT_S = Settings.model_fields["redis_socket_timeout_s"].default


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("bus-redis")) as url:
        yield url


@pytest.fixture(params=["in_process", "redis"])
async def bus(request: pytest.FixtureRequest, redis_url: str, tmp_path: Path) -> AsyncIterator[EventBus]:
    async with sqlite_keyring(tmp_path) as keys:
        # Timeouts as the service's own client has them (`Services`): redis-py bounds the
        # wait for a closed socket by the connect timeout, and without one the bus's close,
        # after its reader was cancelled in a blocking read, once waited past the suite's
        # 600 s limit (redis-py#3941).
        bus: EventBus = InProcessBus(queue_size=4) if request.param == "in_process" else RedisStreamBus(
            Redis.from_url(redis_url, socket_connect_timeout=SOCKET_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S),
            keys, queue_size=4)
        yield bus
        await bus.close()


async def publish(bus: EventBus, channel: str, n: int) -> list[str]:
    return [(await bus.publish(channel, type="insight", tenant_id="t", data={"n": i})).id for i in range(n)]


async def test_replay_after_an_id_returns_later_events_in_order(bus: EventBus) -> None:
    ids = await publish(bus, "t:t:customer:replay", 5)
    replayed = await bus.history("t:t:customer:replay", ids[1])
    assert [e.id for e in replayed] == ids[2:]
    assert [e.data["n"] for e in replayed] == [2, 3, 4]


async def test_live_subscription_after_history_has_no_gap_or_duplicate(bus: EventBus) -> None:
    channel = "t:t:customer:live"
    ids = await publish(bus, channel, 2)
    subscription = await bus.subscribe(channel)
    history = await bus.history(channel, ids[0])
    later = await publish(bus, channel, 2)
    seen = []
    async for event in subscription.events(history, ids[0]):
        seen.append(event.id)
        if len(seen) == 3:
            break
    assert seen == [ids[1], *later]


async def test_slow_consumer_overflows_instead_of_growing(bus: EventBus) -> None:
    channel = "t:t:customer:slow"
    subscription = await bus.subscribe(channel)
    await asyncio.sleep(0.3)  # let the Redis reader pick the channel up
    await publish(bus, channel, 10)
    for _ in range(50):
        if subscription.overflowed:
            break
        await asyncio.sleep(0.05)
    assert subscription.overflowed and subscription.pending == 0
    with pytest.raises(SlowConsumer):
        async for _ in subscription.events([], None):
            pass


async def test_an_event_being_sent_still_counts_against_the_buffer(bus: EventBus) -> None:
    """The buffer bounds how far behind a follower may fall, the event it is sending included."""

    async def until(done: Callable[[], bool]) -> None:
        for _ in range(100):
            if done():
                return
            await asyncio.sleep(0.02)

    channel = "t:t:customer:bound"
    subscription = await bus.subscribe(channel)
    await asyncio.sleep(0.3)  # let the Redis reader pick the channel up
    await publish(bus, channel, 4)
    await until(lambda: subscription.pending == 4)
    assert subscription.next_event() is not None  # being sent to a slow screen
    await publish(bus, channel, 1)
    await until(lambda: subscription.pending == 4)
    assert not subscription.overflowed
    await publish(bus, channel, 1)
    await until(lambda: subscription.overflowed)
    assert subscription.overflowed and subscription.pending == 0
    with pytest.raises(SlowConsumer):
        subscription.next_event()


async def test_channels_are_separate(bus: EventBus) -> None:
    await publish(bus, "t:a:customer:1", 3)
    assert await bus.history("t:b:customer:1", "0-0") == []


async def test_in_process_replay_memory_is_bounded_across_channels() -> None:
    """Channel names come from client-chosen customer ids: 5,000 of them must not grow memory."""
    bus = InProcessBus(max_total_events=1_000)
    for index in range(5_000):
        await bus.publish(f"t:acme:customer:c-{index}", type="insight", tenant_id="acme", data={"n": index})
    assert bus.retained_events <= 1_000
    assert await bus.history("t:acme:customer:c-0", "0-0") == [], "the least recently written went first"
    latest = await bus.history("t:acme:customer:c-4999", "0-0")
    assert [event.data["n"] for event in latest] == [4999]


async def test_idle_channels_expire() -> None:
    now = [0.0]
    bus = InProcessBus(idle_expiry_s=60, clock=lambda: now[0])
    await bus.publish("t:acme:customer:old", type="insight", tenant_id="acme", data={})
    now[0] = 61.0
    await bus.publish("t:acme:customer:new", type="insight", tenant_id="acme", data={})
    assert await bus.history("t:acme:customer:old", "0-0") == []
    assert len(await bus.history("t:acme:customer:new", "0-0")) == 1
    assert bus.retained_events == 1
