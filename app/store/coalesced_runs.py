"""Background work per key that asks to run again rather than piling up.

A document write wants the tenant's retrieval index rebuilt, an outcome wants the
tenant's scoring model checked: each is slow, and a burst of requests for one tenant
must cost one run at a time, plus one more after it for whatever arrived meanwhile
(that run sees all of it), never one run per request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger(__name__)


class CoalescedRuns:
    def __init__(self, job: Callable[[str], Awaitable[Any]], *, name: str) -> None:
        self._job = job
        self._name = name
        self._running: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()

    def request(self, key: str) -> None:
        """Runs `job(key)` in the background now, or once more after the run under way;
        returns at once."""
        running = self._running.get(key)
        if running is not None and not running.done():
            self._again.add(key)
            return
        self._running[key] = asyncio.get_running_loop().create_task(self._until_settled(key),
                                                                  name=f"{self._name}:{key}")

    async def _until_settled(self, key: str) -> None:
        try:
            while True:
                self._again.discard(key)
                try:
                    await self._job(key)
                except Exception:  # noqa: BLE001 - the next request runs it again
                    logger.exception("%s failed for %s", self._name, key)
                if key not in self._again:
                    return
        finally:
            if self._running.get(key) is asyncio.current_task():
                del self._running[key]

    async def idle(self) -> None:
        """Waits for every run under way (and the runs they leave due) to finish."""
        while self._running:
            await asyncio.gather(*list(self._running.values()), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*list(self._running.values()), return_exceptions=True)
        self._running.clear()
