"""A write the database refused for a moment (a busy pool, a locked SQLite file, a
failover) is tried again after short pauses before its callers are told; the audit
writer and the group-committed inserts share this one policy (tenacity)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from tenacity import AsyncRetrying, RetryCallState, stop_after_attempt, wait_chain, wait_fixed

log = logging.getLogger(__name__)
PAUSES_S = (0.1, 0.5, 1.0)


async def retried(write: Callable[[], Awaitable[None]], *, what: str) -> None:
    """Raises what the last attempt raised, once every pause is spent."""

    def warn(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        pause = state.next_action.sleep if state.next_action else 0.0
        log.warning("%s failed (%r); retrying in %.1f s", what, error, pause)

    try:
        async for attempt in AsyncRetrying(
            wait=wait_chain(*(wait_fixed(pause) for pause in PAUSES_S)),
            stop=stop_after_attempt(len(PAUSES_S) + 1), before_sleep=warn, reraise=True,
        ):
            with attempt:
                await write()
    except Exception:
        log.exception("%s failed for good", what)
        raise
