"""Provider circuit breakers shared by every replica through Redis.

One hash per provider (`crm:breaker:<provider>`) holds the state, when it opened, the
probe lease and the window's time buckets. Each check and each record is one Lua
script, so concurrent replicas update it atomically: the replica whose record opens
(or closes) the breaker is the only one told of the transition, which makes exactly one
alert per transition cluster-wide, and every other replica skips the provider from its
next check on.

The check before a call must cost nothing on the hot path: a process trusts the state
it last read for `state_cache_s` (a closed breaker, an open one still cooling down, or
one whose trial call is out is answered from memory); only a stale entry or a due probe
goes to Redis.

Redis being away never fails a call: this process's own breakers (the in-memory store)
take over until Redis answers again (each process then decides, and alerts, alone).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from chains.providers.health import (
    BreakerPolicy,
    BreakerSnapshot,
    BreakerState,
    CallOutcome,
    InMemoryBreakerStore,
    Transition,
    Verdict,
    WindowStats,
)

log = logging.getLogger(__name__)

KEY_PREFIX = "crm:breaker:"
REDIS_TIMEOUT_S = 0.5  # a slow Redis must not slow the call: fall back instead
REDIS_RETRY_AFTER_S = 5.0  # after a failure, this process decides alone for a while

# A window bucket is four integer fields (c:, e:, t:, s: then the bucket number: calls,
# errors, timeouts, slow calls), incremented in place with HINCRBY; stale ones are
# deleted when the window is summed.
_WINDOW = """
local function window(key, oldest)
  local fields = redis.call('HGETALL', key)
  local totals = {c = 0, e = 0, t = 0, s = 0}
  local stale = {}
  for i = 1, #fields, 2 do
    local kind, bucket = string.match(fields[i], '^(%a):(%-?%d+)$')
    if kind then
      if tonumber(bucket) < oldest then
        stale[#stale + 1] = fields[i]
      else
        totals[kind] = totals[kind] + tonumber(fields[i + 1])
      end
    end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  return totals
end
"""

# ARGV: now, ok, timed_out, slow, bucket, oldest, min_calls, error_rate, slow_rate, ttl
RECORD = _WINDOW + """
local key = KEYS[1]
local now = ARGV[1]
local ok, timed_out, slow = ARGV[2] == '1', ARGV[3] == '1', ARGV[4] == '1'
local bucket, oldest = ARGV[5], tonumber(ARGV[6])
local min_calls, error_rate, slow_rate = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local state = redis.call('HGET', key, 'state') or 'closed'
local result
if state == 'open' then
  result = {'', 'open', 0, 0, 0, 0}
elseif state == 'half_open' then
  if ok and not slow then
    redis.call('DEL', key)
    redis.call('HSET', key, 'state', 'closed')
    result = {'closed', 'closed', 1, 0, 0, 0}
  else
    redis.call('HSET', key, 'state', 'open', 'opened_at', now, 'probe_until', '0')
    result = {'', 'open', 0, 0, 0, 0}
  end
else
  redis.call('HINCRBY', key, 'c:' .. bucket, 1)
  if not ok then redis.call('HINCRBY', key, 'e:' .. bucket, 1) end
  if timed_out then redis.call('HINCRBY', key, 't:' .. bucket, 1) end
  if slow then redis.call('HINCRBY', key, 's:' .. bucket, 1) end
  local w = window(key, oldest)
  result = {'', 'closed', w.c, w.e, w.t, w.s}
  if w.c >= min_calls and (w.e / w.c >= error_rate or w.s / w.c >= slow_rate) then
    redis.call('DEL', key)
    redis.call('HSET', key, 'state', 'open', 'opened_at', now, 'probe_until', '0')
    result = {'open', 'open', w.c, w.e, w.t, w.s}
  end
end
redis.call('EXPIRE', key, ARGV[10])
return result
"""

# ARGV: now, cooldown_s, probe_lease_s. Returns {allowed, state, opened_at}.
ALLOW = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
local h = redis.call('HMGET', key, 'state', 'opened_at', 'probe_until')
local state, opened_at, probe_until = h[1] or 'closed', tonumber(h[2] or '0'), tonumber(h[3] or '0')
if state == 'closed' then return {1, 'closed', '0'} end
if state == 'open' and now < opened_at + tonumber(ARGV[2]) then return {0, 'open', h[2] or '0'} end
if state == 'half_open' and now < probe_until then return {0, 'half_open', h[2] or '0'} end
redis.call('HSET', key, 'state', 'half_open', 'probe_until', tostring(now + tonumber(ARGV[3])))
return {1, 'half_open', h[2] or '0'}
"""


@dataclass(frozen=True, slots=True)
class _Seen:
    state: BreakerState
    opened_at: float
    read_at: float  # monotonic


class RedisBreakerStore:
    def __init__(self, redis: Redis, policy: BreakerPolicy) -> None:
        self.redis = redis
        self.policy = policy
        self.fallback = InMemoryBreakerStore(policy)
        self._record = redis.register_script(RECORD)
        self._allow = redis.register_script(ALLOW)
        self._seen: dict[str, _Seen] = {}
        self._redis_back_at = 0.0  # monotonic

    def _ttl_s(self) -> int:
        return int(max(self.policy.window_s, self.policy.cooldown_s + self.policy.probe_lease_s) * 4) + 60

    def _cached(self, provider: str, now: float) -> Verdict | None:
        seen = self._seen.get(provider)
        if seen is None or time.monotonic() - seen.read_at > self.policy.state_cache_s:
            return None
        if seen.state is BreakerState.CLOSED:
            return Verdict(True, seen.state)
        if seen.state is BreakerState.OPEN and now < seen.opened_at + self.policy.cooldown_s:
            return Verdict(False, seen.state)
        if seen.state is BreakerState.HALF_OPEN:
            return Verdict(False, seen.state)  # the trial call is out (maybe ours): wait for its result
        return None  # a probe may be due: only Redis can hand out the lease

    def _remember(self, provider: str, state: BreakerState, opened_at: float) -> None:
        self._seen[provider] = _Seen(state, opened_at, time.monotonic())

    def _redis_usable(self) -> bool:
        return time.monotonic() >= self._redis_back_at

    def _redis_failed(self, error: BaseException) -> None:
        if self._redis_usable():
            log.warning("provider breakers: Redis unavailable (%r), deciding in this process for %.0f s",
                        error, REDIS_RETRY_AFTER_S)
        self._redis_back_at = time.monotonic() + REDIS_RETRY_AFTER_S

    async def allow(self, provider: str, now: float) -> Verdict:
        # While Redis is away this process decides alone: what it last read from Redis is
        # no longer the state (its own breaker may have opened since).
        if not self._redis_usable():
            return await self.fallback.allow(provider, now)
        if (cached := self._cached(provider, now)) is not None:
            return cached
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                allowed, state, opened_at = await self._allow(
                    keys=[KEY_PREFIX + provider], args=[repr(now), self.policy.cooldown_s, self.policy.probe_lease_s]
                )
        except (RedisError, OSError, TimeoutError) as error:
            self._redis_failed(error)
            return await self.fallback.allow(provider, now)
        verdict = Verdict(bool(allowed), BreakerState(_text(state)))
        self._remember(provider, verdict.state, float(opened_at))
        return verdict

    async def record(self, provider: str, outcome: CallOutcome, now: float) -> tuple[BreakerState, Transition | None]:
        if not self._redis_usable():
            return await self.fallback.record(provider, outcome, now)
        policy = self.policy
        args: list[str | int | float] = [
            repr(now), int(outcome.ok), int(outcome.timed_out), int(outcome.slow(policy)),
            policy.bucket(now), policy.oldest_bucket(now), policy.min_calls, policy.error_rate, policy.slow_rate,
            self._ttl_s(),
        ]
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                reply = await self._record(keys=[KEY_PREFIX + provider], args=args)
        except (RedisError, OSError, TimeoutError) as error:
            self._redis_failed(error)
            return await self.fallback.record(provider, outcome, now)
        changed, state_name, *counts = reply
        state = BreakerState(_text(state_name))
        self._remember(provider, state, now if state is BreakerState.OPEN else 0.0)
        changed = _text(changed)
        if not changed:
            return state, None
        stats = WindowStats(*(int(c) for c in counts))
        reason = stats.trips(policy) if state is BreakerState.OPEN else "trial call succeeded"
        return state, Transition(provider, state, reason or "window tripped", stats, now, policy.cooldown_s)

    async def snapshot(self, provider: str, now: float) -> BreakerSnapshot:
        if not self._redis_usable():
            return await self.fallback.snapshot(provider, now)
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                fields = await self.redis.hgetall(KEY_PREFIX + provider)
        except (RedisError, OSError, TimeoutError) as error:
            self._redis_failed(error)
            return await self.fallback.snapshot(provider, now)
        values = {_text(k): _text(v) for k, v in fields.items()}
        state = BreakerState(values.get("state", "closed"))
        oldest = self.policy.oldest_bucket(now)
        totals = dict.fromkeys("cets", 0)
        for name, value in values.items():
            kind, _, bucket = name.partition(":")
            if kind in totals and bucket.lstrip("-").isdigit() and int(bucket) >= oldest:
                totals[kind] += int(value)
        opened_at = float(values.get("opened_at", 0)) if state is not BreakerState.CLOSED else None
        return BreakerSnapshot(
            provider, state, WindowStats(totals["c"], totals["e"], totals["t"], totals["s"]),
            opened_at, opened_at + self.policy.cooldown_s if opened_at is not None else None,
        )


def _text(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
