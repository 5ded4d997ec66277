"""Concurrent reads of one key that share their database round trips.

Every interaction analysis asks whether its tenant's knowledge changed (one indexed
read). Under a burst of new streams those reads came by the hundred for one tenant at
once, queued for the connection pool behind each other, and some streams failed waiting
for a connection. Here a burst of callers costs at most two reads per key, and no
caller gets a value read before it asked: one that arrives while a read is under way
waits for the next read, which starts when that one ends and answers everyone who
arrived meanwhile. (Joining the read under way would be cheaper and could answer with
a revision from before a write the caller had already seen committed.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class SharedReads(Generic[_K, _V]):
    def __init__(self, read: Callable[[_K], Awaitable[_V]]) -> None:
        self._read = read
        self._under_way: dict[_K, asyncio.Future[_V]] = {}
        self._next: dict[_K, asyncio.Future[_V]] = {}

    async def get(self, key: _K) -> _V:
        """The value as read after this call began. Cancelling a caller leaves the read
        running for the others."""
        if key not in self._under_way:
            return await asyncio.shield(self._start(key))
        following = self._next.get(key)
        if following is None:
            following = self._next[key] = asyncio.get_running_loop().create_future()
            following.add_done_callback(_retrieve)
        return await asyncio.shield(following)

    def _start(self, key: _K) -> asyncio.Future[_V]:
        read = asyncio.ensure_future(self._read(key))
        self._under_way[key] = read
        read.add_done_callback(lambda done: self._finished(key, done))
        return read

    def _finished(self, key: _K, done: asyncio.Future[_V]) -> None:
        del self._under_way[key]
        _retrieve(done)
        following = self._next.pop(key, None)
        if following is not None:
            self._start(key).add_done_callback(lambda read: _settle(following, read))


def _settle(waiting: asyncio.Future[_V], read: asyncio.Future[_V]) -> None:
    if waiting.done():
        return
    if read.cancelled():
        waiting.cancel()
    elif (error := read.exception()) is not None:
        waiting.set_exception(error)
    else:
        waiting.set_result(read.result())


def _retrieve(future: asyncio.Future[object]) -> None:
    """A read whose callers all left must not log "exception was never retrieved"."""
    if not future.cancelled():
        future.exception()
