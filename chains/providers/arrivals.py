"""A provider's chunks in the groups they arrive in.

Everything after the provider costs per chunk, not per character: the analysis parser,
the censor, LangChain's and LangServe's work on each chunk of a chain, one SSE event.
Under load a stream's tokens come several to a network read (the loop reaches a socket
late, and finds more waiting), so handing on what arrived together as one group pays
that cost once per group. In the bench at concurrency 100 the service's CPU per piece of
answer went from about 23 to 19 µs (README "Tokens that arrive together").

A reader task reads ahead; the caller takes whatever has arrived each time it asks and
waits only when nothing has. Nothing is held back for a group to fill: a token that
arrives alone goes on alone, one loop turn after it was read. The reader keeps only
what the caller needs of each chunk (`keep`: its text and usage, not the message object)
and stops `ahead` of the caller until it takes some, so a caller held up downstream (a
slow client) holds up the provider's stream, as it did when it read the stream itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_K = TypeVar("_K")


async def close_stream(chunks: AsyncIterator[Any]) -> None:
    """Closes a provider's stream; closing a broken one must not mask its error."""
    closer = getattr(chunks, "aclose", None)
    if closer is not None:
        try:
            await closer()
        except Exception:  # noqa: BLE001
            log.debug("error while closing provider stream", exc_info=True)


class Arrivals(Generic[_T, _K]):
    """Groups of what `keep` takes of `chunks` (after `first`, already read by the
    caller), as they arrive.

    From construction the reader owns `chunks`: it reads them and closes them, in its own
    task, so the stream is never read and closed by two tasks at once. The reader gives
    the loop a turn every `per_turn` chunks, so a provider that answers faster than the
    loop turns cannot hold it; a caller slower than that gets larger groups, up to
    `ahead`. The provider's error is raised after every chunk it sent before it.

    `idle_s` and `deadline` (the loop's clock) bound each wait for the provider: past
    either, the wait is cut and the caller gets `TimeoutError`. They count only waits
    for the provider, never the reader's wait for the caller to take what was read, so a
    fast provider is not cut for a slow client. A per-token `asyncio.timeout` costs a
    timer-heap push and a cancelled entry per token (with hundreds of streams that heap
    churn was a quarter of the server's CPU), and a per-token wrapper a coroutine and a
    task lookup (about 0.8 µs a token); one check a second costs nothing per token and
    fires at most a second late.
    """

    CHECK_EVERY_S = 1.0

    def __init__(
        self,
        chunks: AsyncIterator[_T],
        *,
        keep: Callable[[_T], _K],
        first: _T | None = None,
        per_turn: int,
        ahead: int,
        idle_s: float | None = None,
        deadline: float | None = None,
    ) -> None:
        self._chunks, self._keep = chunks, keep
        self._per_turn, self._ahead = per_turn, ahead
        self._arrived: list[_K] = [] if first is None else [keep(first)]
        self._ready, self._room = asyncio.Event(), asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._asked_at: float | None = None  # while the reader waits for the provider
        self._idle_s = idle_s if idle_s is not None else float("inf")
        self._deadline = deadline if deadline is not None else float("inf")
        self._cut = False
        self._check_handle: asyncio.TimerHandle | None = None
        self._started = False
        self._closer: asyncio.Task[None] | None = None
        self._reader = asyncio.create_task(self._read_ahead())
        self._reader.add_done_callback(self._reader_ended)
        if idle_s is not None or deadline is not None:
            self._check_handle = self._loop.call_later(min(self.CHECK_EVERY_S, self._idle_s), self._check)

    async def _read_ahead(self) -> None:
        self._started = True
        keep, clock, count = self._keep, self._loop.time, 0
        try:
            while True:
                self._asked_at = clock()
                try:
                    chunk = await anext(self._chunks, None)
                except asyncio.CancelledError:
                    reader = self._reader
                    if self._cut and reader.uncancel() == 0:  # the deadline's was the only cancellation
                        raise TimeoutError("provider went silent or exceeded its per-call timeout") from None
                    raise
                self._asked_at = None
                if chunk is None:
                    return
                self._arrived.append(keep(chunk))
                self._ready.set()
                count += 1
                if len(self._arrived) >= self._ahead:
                    self._room.clear()
                    await self._room.wait()  # not a wait for the provider: no deadline counts it
                elif count % self._per_turn == 0:
                    await asyncio.sleep(0)
        finally:
            self._asked_at = None
            await close_stream(self._chunks)

    def _check(self) -> None:
        now = self._loop.time()
        asked_at = self._asked_at
        if asked_at is not None and (now - asked_at >= self._idle_s or now >= self._deadline):
            self._cut = True
            self._reader.cancel()
            return
        # Past the deadline with nobody waiting (the caller is slow to take what was read),
        # the next wait is cut at the next check: checking at once again would spin the loop.
        left = self._deadline - now
        self._check_handle = self._loop.call_later(
            min(self.CHECK_EVERY_S, left) if left > 0 else self.CHECK_EVERY_S, self._check)

    def _reader_ended(self, reader: asyncio.Task[None]) -> None:
        self._ready.set()
        if self._check_handle is not None:
            self._check_handle.cancel()
        if not self._started:
            # Cancelled before its first step (a caller that took the first chunk and left at
            # once): its `finally` never ran, and nothing else reads the stream. Closed here,
            # not by the collector's finalizer some time later.
            self._closer = self._loop.create_task(close_stream(self._chunks))
        if not reader.cancelled():
            reader.exception()  # retrieved: a caller that left early does not want it

    def __aiter__(self) -> Arrivals[_T, _K]:
        return self

    async def __anext__(self) -> list[_K]:
        while not self._arrived:
            if self._reader.done():
                self._reader.result()
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        group, self._arrived = self._arrived, []
        self._room.set()
        return group

    async def aclose(self) -> None:
        """Stops the reader and waits while it closes the stream. A caller cancelled again
        meanwhile (anyio's cancel scopes, as sse-starlette's, cancel at every turn until
        the task ends) leaves the reader to finish closing on its own. The deadline's check
        stops first: the provider's own cleanup, run as the reader is cancelled, must not be
        cancelled again by a deadline that passes meanwhile."""
        if self._check_handle is not None:
            self._check_handle.cancel()
        self._reader.cancel()
        await asyncio.wait([self._reader])
        if self._closer is not None:
            await asyncio.wait([self._closer])
