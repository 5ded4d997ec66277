"""Cluster-wide slots through a real redis-server: replicas share one limit, leases never
leak, a dead holder's lease comes back, and a Redis outage falls back to local slots.

Two `Scheduler`s with their own Redis clients stand for two replicas; one test goes
through two whole apps sharing a Redis.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from app.api.chains import INTERACTIONS_PATH
from app.core.auth import TokenVerifier
from app.core.cluster_slots import ClusterSlots
from app.core.config import Settings
from app.core.scheduler import Priority, Scheduler, SlotUnavailable
from app.server import create_app
from tests.conftest import make_settings
from tests.support.fake_openai import FakeOpenAI
from tests.support.live_server import live_server
from tests.support.servers import RedisServer, redis_server

_providers = itertools.count()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("cluster-redis")) as url:
        yield url


@pytest.fixture
def provider() -> str:
    """A provider name of its own per test: its keys in the shared Redis are its own too."""
    return f"prov{next(_providers)}"


@pytest.fixture
async def clients(redis_url: str) -> AsyncIterator[Callable[[], Redis]]:
    """A new client (its own pool) per replica, as separate processes would have."""
    made: list[Redis] = []

    def make() -> Redis:
        made.append(Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5))
        return made[-1]

    yield make
    for client in made:
        await client.aclose()


def replica(redis: Redis, provider: str, *, limit: int, local: int = 8, lease_ttl_s: float = 10.0,
            retry_after_s: float = 2.0) -> Scheduler:
    cluster = ClusterSlots(redis, provider=provider, limit=limit, lease_ttl_s=lease_ttl_s, retry_after_s=retry_after_s)
    return Scheduler(local, cluster=cluster)


def cluster_of(scheduler: Scheduler) -> ClusterSlots:
    assert scheduler.cluster is not None
    return scheduler.cluster


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 20.0) -> None:
    """Waits for an outcome (background releases, expiry); the bound only stops a hang."""
    async with asyncio.timeout(timeout_s):
        while not await check():
            await asyncio.sleep(0.05)


def state(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def checked() -> bool:
        return check()

    return checked


def queue_depth_is(scheduler: Scheduler, depth: int) -> Callable[[], Awaitable[bool]]:
    return state(lambda: scheduler.queue_depth == depth)


async def nothing_left(redis: Redis, provider: str) -> bool:
    keys = ClusterSlots(redis, provider=provider, limit=1).keys
    return await redis.zcard(keys["leases"]) == 0 and await redis.zcard(keys["queue"]) == 0


def fallbacks(provider: str) -> float:
    return REGISTRY.get_sample_value("ai_scheduler_cluster_fallback_total", {"provider": provider}) or 0.0


class Holders:
    """Counts runs inside their slot across every replica (one event loop: exact)."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.done = 0

    async def run(self, scheduler: Scheduler, tenant: str, priority: Priority = "standard",
                  hold: Callable[[], Awaitable[object]] | None = None) -> None:
        loop = asyncio.get_running_loop()
        async with scheduler.slot(tenant_id=tenant, priority=priority, deadline=loop.time() + 120):
            self.now += 1
            self.most = max(self.most, self.now)
            await (hold() if hold is not None else asyncio.sleep(0.02))
            self.now -= 1
            self.done += 1


async def test_two_replicas_together_never_exceed_the_cluster_limit(
    clients: Callable[[], Redis], provider: str
) -> None:
    limit = 3
    a, b = replica(clients(), provider, limit=limit, local=5), replica(clients(), provider, limit=limit, local=5)
    holders = Holders()
    probe = clients()
    leases_key = cluster_of(a).keys["leases"]
    seen_in_redis: list[int] = []

    async def hold() -> None:
        seen_in_redis.append(await probe.zcard(leases_key))
        await asyncio.sleep(0.02)

    runs = [holders.run(a if n % 2 else b, f"t{n % 3}", "high" if n % 7 == 0 else "standard", hold)
            for n in range(40)]
    await asyncio.wait_for(asyncio.gather(*runs), 120)
    assert holders.done == 40, "every run got its turn"
    assert holders.most == limit, "the replicas together used the whole limit, never more"
    assert max(seen_in_redis) <= limit
    await eventually(lambda: nothing_left(probe, provider), "leases released")
    for scheduler in (a, b):
        assert scheduler.running == 0 and scheduler.queue_depth == 0 and not cluster_of(scheduler).held
        await scheduler.close()


async def test_local_priority_still_decides_who_gets_the_next_cluster_lease(
    clients: Callable[[], Redis], provider: str
) -> None:
    scheduler = replica(clients(), provider, limit=1, local=8)
    loop = asyncio.get_running_loop()
    order: list[str] = []
    gate = asyncio.Event()

    async def blocker() -> None:
        async with scheduler.slot(tenant_id="x", priority="standard", deadline=loop.time() + 60):
            await gate.wait()

    async def job(name: str, tenant: str, priority: Priority) -> None:
        async with scheduler.slot(tenant_id=tenant, priority=priority, deadline=loop.time() + 60):
            order.append(name)

    holder = asyncio.create_task(blocker())
    await eventually(state(lambda: scheduler.running == 1), "blocker holds the lease")
    jobs: list[asyncio.Task[None]] = []
    arrivals: list[tuple[str, str, Priority]] = [("a0", "a", "standard"), ("a1", "a", "standard"),
                                                 ("b2", "b", "standard"), ("c3", "c", "high")]
    for name, tenant, priority in arrivals:
        jobs.append(asyncio.create_task(job(name, tenant, priority)))
        await eventually(queue_depth_is(scheduler, len(jobs)), "queued")
    assert scheduler.running == 1, "local slots are free, but the cluster's one lease is taken"
    gate.set()
    await asyncio.wait_for(asyncio.gather(holder, *jobs), 60)
    assert order == ["c3", "a0", "b2", "a1"]
    await scheduler.close()


async def test_a_waiter_past_its_deadline_or_cancelled_leaves_no_lease_behind(
    clients: Callable[[], Redis], provider: str
) -> None:
    a, b = replica(clients(), provider, limit=1), replica(clients(), provider, limit=1)
    probe = clients()
    keys = cluster_of(a).keys
    loop = asyncio.get_running_loop()
    async with a.slot(tenant_id="a", priority="standard", deadline=loop.time() + 60):
        held = set(cluster_of(a).held)
        with pytest.raises(SlotUnavailable) as raised:
            async with b.slot(tenant_id="b", priority="high", deadline=loop.time() + 0.3):
                pass
        assert raised.value.reason == "deadline"
        assert b.running == 0 and b.queue_depth == 0

        waiting = asyncio.create_task(
            b.slot(tenant_id="b", priority="standard", deadline=loop.time() + 60).__aenter__())
        await eventually(state(lambda: b.queue_depth == 1), "queued")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert b.running == 0 and b.queue_depth == 0

        async def only_a_holds() -> bool:
            members = {m.decode() if isinstance(m, bytes) else str(m) for m in await probe.zrange(keys["leases"], 0, -1)}
            return members == held and await probe.zcard(keys["queue"]) == 0

        await eventually(only_a_holds, "the waiters' tickets are gone, and no lease of theirs is there")
        assert not cluster_of(b).held
    await eventually(lambda: nothing_left(probe, provider), "a's lease released")
    async with b.slot(tenant_id="b", priority="standard", deadline=loop.time() + 60):
        assert len(cluster_of(b).held) == 1, "the slot is free again"
    for scheduler in (a, b):
        await scheduler.close()


async def test_a_waiter_queued_while_redis_answered_a_fast_path_request_is_not_stranded(
    clients: Callable[[], Redis], provider: str
) -> None:
    """A takes the free local slot and asks Redis; B queues meanwhile (the slot looks
    taken); A finds the cluster full and is refused (the queue is full). The local slot is
    free again, so B must get the cluster's lease as soon as it comes back, not wait out
    its deadline."""
    other = ClusterSlots(clients(), provider=provider, limit=1)
    held = await other.try_acquire()
    assert held is not None and held.id is not None
    scheduler = Scheduler(1, queue_max_size=1, cluster=ClusterSlots(clients(), provider=provider, limit=1))
    loop = asyncio.get_running_loop()
    ran: list[str] = []

    async def run(name: str) -> str:
        try:
            async with scheduler.slot(tenant_id=name, priority="standard", deadline=loop.time() + 60):
                ran.append(name)
                return "ran"
        except SlotUnavailable as unavailable:
            return unavailable.reason

    a = asyncio.create_task(run("a"))
    await asyncio.sleep(0)  # a holds the local slot and waits for Redis
    b = asyncio.create_task(run("b"))
    assert await a == "queue_full"
    other.release(held)
    async with asyncio.timeout(20):  # a stranded b would wait its whole minute
        assert await b == "ran"
    assert ran == ["b"]
    await scheduler.close()
    await other.close()


SLOW_REDIS = """
local started = redis.call('TIME')
repeat
  local now = redis.call('TIME')
until (now[1] - started[1]) * 1000000 + (now[2] - started[2]) > tonumber(ARGV[1])
return 1
"""


async def test_a_slow_answer_from_redis_is_no_outage(
    clients: Callable[[], Redis], redis_url: str, provider: str
) -> None:
    """Redis busy for 0.8 s (or a loop too busy to read its replies in time) makes calls
    time out; that must not lift the cluster limit: the runs wait for the lease held
    elsewhere instead of being let in as if Redis were gone."""
    other = ClusterSlots(clients(), provider=provider, limit=1)
    held = await other.try_acquire()
    assert held is not None and held.id is not None
    scheduler = replica(clients(), provider, limit=1)
    assert await cluster_of(scheduler).try_acquire() is None  # full; and the connection is open
    before = fallbacks(provider)
    blocker = Redis.from_url(redis_url)  # no socket timeout: it waits out its own script
    stall = asyncio.create_task(blocker.eval(SLOW_REDIS, 0, 800_000))
    await asyncio.sleep(0.05)
    holders = Holders()
    runs = [asyncio.create_task(holders.run(scheduler, f"t{n}")) for n in range(4)]
    await stall
    await asyncio.sleep(0.5)
    assert holders.most == 0, "the lease is still held by the other replica"
    assert fallbacks(provider) == before and cluster_of(scheduler).available
    other.release(held)
    await asyncio.gather(*runs)
    assert holders.done == 4 and holders.most == 1
    await scheduler.close()
    await other.close()
    await blocker.aclose()


async def test_held_leases_are_renewed_and_a_dead_holders_lease_expires(
    clients: Callable[[], Redis], provider: str
) -> None:
    ttl = 1.5
    live = replica(clients(), provider, limit=1, lease_ttl_s=ttl)
    probe = clients()
    keys = cluster_of(live).keys
    loop = asyncio.get_running_loop()
    async with live.slot(tenant_id="a", priority="standard", deadline=loop.time() + 60):
        (lease_id,) = cluster_of(live).held
        await asyncio.sleep(ttl * 2.5)
        assert await probe.zscore(keys["leases"], lease_id) is not None, "renewed while held"
    await eventually(lambda: nothing_left(probe, provider), "released")
    await live.close()

    dead = ClusterSlots(clients(), provider=provider, limit=1, lease_ttl_s=ttl)
    lease = await dead.try_acquire()
    assert lease is not None and lease.id is not None
    await dead.close()  # the replica dies holding it: no release, no renewal
    assert await probe.zscore(keys["leases"], lease.id) is not None

    survivor = replica(clients(), provider, limit=1, lease_ttl_s=ttl)
    async with survivor.slot(tenant_id="b", priority="standard", deadline=loop.time() + 60):
        assert await probe.zscore(keys["leases"], lease.id) is None, "the dead holder's lease expired"
        assert len(cluster_of(survivor).held) == 1
    await survivor.close()


async def test_redis_down_falls_back_to_local_slots_and_the_cluster_limit_comes_back(
    tmp_path: Path, provider: str
) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    redis = Redis.from_url(server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    scheduler = replica(redis, provider, limit=1, local=3, retry_after_s=0.2)
    loop = asyncio.get_running_loop()
    try:
        # Redis stops while one run holds the only lease and another waits for it.
        gate = asyncio.Event()
        inside = Holders()
        first = asyncio.create_task(inside.run(scheduler, "a", hold=gate.wait))
        await eventually(state(lambda: inside.now == 1), "first run holds the lease")
        second = asyncio.create_task(inside.run(scheduler, "b", hold=gate.wait))
        await eventually(state(lambda: scheduler.queue_depth == 1), "second waits for the cluster")
        before = fallbacks(provider)
        server.stop()
        await eventually(state(lambda: inside.now == 2), "the waiter runs under the local limit")
        gate.set()
        await asyncio.wait_for(asyncio.gather(first, second), 30)

        # While it is down, runs proceed up to the local limit, never hang, never fail.
        barrier = asyncio.Barrier(3)
        down = Holders()
        await asyncio.wait_for(asyncio.gather(*(down.run(scheduler, f"t{n}", hold=barrier.wait)
                                                for n in range(3))), 30)
        assert down.most == 3, "three at once, more than the cluster's one"
        assert fallbacks(provider) >= before + 4
        assert not cluster_of(scheduler).available

        server.start()

        async def cluster_again() -> bool:
            async with scheduler.slot(tenant_id="probe", priority="standard", deadline=loop.time() + 30):
                pass
            return cluster_of(scheduler).available

        await eventually(cluster_again, "the cluster limit applies again")
        after = Holders()
        await asyncio.wait_for(asyncio.gather(*(after.run(scheduler, f"t{n}") for n in range(6))), 60)
        assert after.done == 6 and after.most == 1, "one at a time again, as the cluster says"
    finally:
        await scheduler.close()
        await redis.aclose()
        server.stop()


# --- Through the production path: two apps (replicas) share one Redis and one slot. ---


@pytest.fixture
def two_replicas(
    tmp_path: Path, redis_url: str, fake_openai: tuple[FakeOpenAI, str]
) -> Iterator[tuple[str, str, TokenVerifier]]:
    _, openai_url = fake_openai

    def settings(name: str) -> Settings:
        return make_settings(
            tmp_path / name, redis_url=redis_url, llm_providers="openai,local", openai_base_url=openai_url,
            openai_api_key="sk-test", llm_max_retries=0, llm_first_token_timeout_s=10, llm_idle_timeout_s=10,
            llm_timeout_s=30, scheduler_max_concurrency=4, scheduler_cluster_max_concurrency=1,
        )

    a_settings, b_settings = settings("a"), settings("b")
    with live_server(create_app(a_settings)) as a, live_server(create_app(b_settings)) as b:
        yield a, b, TokenVerifier(a_settings)


async def test_replicas_beyond_the_cluster_limit_answer_degraded(
    two_replicas: tuple[str, str, TokenVerifier], openai_provider: FakeOpenAI, redis_url: str
) -> None:
    a, b, verifier = two_replicas
    openai_provider.token_delay_s = 0.5  # a run holds its slot for seconds, past the 2 s deadline
    headers = {"Authorization": f"Bearer {verifier.mint(tenant_id='acme', user_id='u')}"}
    topics = ["invoice for March", "webinar recording", "office in Toronto", "API key location"]
    async with httpx.AsyncClient(headers=headers, timeout=60) as http:
        responses = await asyncio.gather(*(
            http.post(f"{url}{INTERACTIONS_PATH}/invoke",
                      json={"input": {"customer_id": f"cust-{n}", "text": f"Question about the {topic}?",
                                      "channel": "chat"}})
            for n, (url, topic) in enumerate(zip([a, b, a, b], topics, strict=True))
        ))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    outputs = [r.json()["output"] for r in responses]
    served = [o for o in outputs if not o["degraded"]]
    # Each replica has 4 local slots: only the cluster's single slot makes the others wait.
    assert len(served) == 1, outputs
    assert all(o["degraded_reason"].split(":")[0] in ("deadline", "predicted_wait") for o in outputs if o["degraded"])
    probe = Redis.from_url(redis_url)
    try:
        await eventually(lambda: nothing_left(probe, "openai"), "every lease released")
    finally:
        await probe.aclose()
