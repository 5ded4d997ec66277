"""A burst of one tenant's new requests must not queue behind each other before the
chain starts: under load the thread pool is busy (database, analysis hand-offs), and
anything on the request path that waits for it holds every request behind it."""

from __future__ import annotations

import asyncio
import threading
import time

from app.core.auth import Principal
from app.core.rate_limit import RequestRateLimiter


async def test_rate_limit_checks_go_ahead_while_the_thread_pool_is_busy() -> None:
    """The moving window the limiter used before swept expired hits holding the key's
    lock across a thread-pool call, and swept again on almost every hit: with the pool
    busy, one tenant's checks queued on that lock (500 streams opened at once waited
    p50 2 s for their check). Requests here arrive one per loop turn, as they do."""
    limiter = RequestRateLimiter(None, per_tenant="100000/minute", per_user="100000/minute")
    rep = Principal(user_id="u", tenant_id="acme", roles=frozenset({"rep"}), expires_at=time.time() + 600)
    await limiter.check(rep)
    loop = asyncio.get_running_loop()
    release = threading.Event()
    pool_blocked = [loop.run_in_executor(None, release.wait) for _ in range(64)]  # more than its threads
    try:
        checks = []
        for _ in range(50):
            checks.append(asyncio.ensure_future(limiter.check(rep)))
            await asyncio.sleep(0)
        # Milliseconds of work: the generous bound only tells "done" from "stuck".
        done, stuck = await asyncio.wait(checks, timeout=10)
    finally:
        release.set()
        await asyncio.gather(*pool_blocked)
        await asyncio.gather(*checks)
    assert not stuck, f"{len(stuck)} of 50 rate-limit checks waited for the thread pool"
    assert all(check.exception() is None for check in done)
