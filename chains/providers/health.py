"""Per-provider circuit breakers: notice a provider that is failing or slow *across*
calls, skip it without waiting for it, probe it after a cool-down, restore it.

The router's per-call failover already survives one bad call, but each call still pays
the bad provider's retries and timeouts first. A breaker turns a pattern into a
decision: once a provider has failed (or been slow to its first token) often enough in
a sliding window, calls go straight to the next provider until a single trial call
(half-open) succeeds again.

State machine, shared by every store:

- `closed`: calls go through; each finished call is recorded in time buckets covering
  `window_s`. With at least `min_calls` in the window, an error rate (timeouts count as
  errors) of `error_rate` or more, or a slow-first-token rate of `slow_rate` or more,
  opens it.
- `open`: calls skip the provider until `cooldown_s` has passed since it opened.
- `half_open`: the first caller after the cool-down is the probe (it holds a lease of
  `probe_lease_s`, so a probe that never reports does not block recovery forever); a
  good probe closes the breaker with a fresh window, a bad one opens it again (no new
  alert: for administrators it never recovered).

Only `closed -> open` and `-> closed` are transitions worth an alert. The store that
decides one returns it to exactly that caller, so one alert is raised per transition.

This module stays importable without the app (chains never import it); the Redis store
that shares state between replicas lives in `app.store.provider_health`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from chains.providers.settings import LOCAL, ProviderSettings

log = logging.getLogger(__name__)

BUCKETS_PER_WINDOW = 10


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


STATE_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """The thresholds, read once from the settings (`LLM_BREAKER_*`)."""

    window_s: float = 60.0
    min_calls: int = 20
    error_rate: float = 0.5
    slow_call_s: float = 8.0
    slow_rate: float = 0.8
    cooldown_s: float = 30.0
    probe_lease_s: float = 40.0
    state_cache_s: float = 1.0

    @classmethod
    def from_settings(cls, settings: ProviderSettings) -> BreakerPolicy:
        return cls(
            window_s=settings.llm_breaker_window_s,
            min_calls=settings.llm_breaker_min_calls,
            error_rate=settings.llm_breaker_error_rate,
            slow_call_s=settings.llm_breaker_slow_call_s,
            slow_rate=settings.llm_breaker_slow_rate,
            cooldown_s=settings.llm_breaker_cooldown_s,
            # A probe is one call: it ends within the call's budget, or its result is lost.
            probe_lease_s=settings.llm_timeout_s + 5.0,
            state_cache_s=settings.llm_breaker_state_cache_s,
        )

    @property
    def bucket_s(self) -> float:
        return self.window_s / BUCKETS_PER_WINDOW

    def bucket(self, now: float) -> int:
        return math.floor(now / self.bucket_s)

    def oldest_bucket(self, now: float) -> int:
        return self.bucket(now) - BUCKETS_PER_WINDOW + 1


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """One provider call, recorded once when it ends (never per token)."""

    ok: bool
    first_token_s: float | None = None
    timed_out: bool = False

    def slow(self, policy: BreakerPolicy) -> bool:
        return self.timed_out or (self.first_token_s is not None and self.first_token_s > policy.slow_call_s)


@dataclass(frozen=True, slots=True)
class WindowStats:
    calls: int = 0
    errors: int = 0
    timeouts: int = 0
    slow_calls: int = 0

    def trips(self, policy: BreakerPolicy) -> str | None:
        """Why this window opens the breaker, or None."""
        if self.calls < policy.min_calls:
            return None
        if self.errors / self.calls >= policy.error_rate:
            return f"error rate {self.errors}/{self.calls} >= {policy.error_rate:g}"
        if self.slow_calls / self.calls >= policy.slow_rate:
            return f"slow first token (> {policy.slow_call_s:g} s) in {self.slow_calls}/{self.calls} calls >= {policy.slow_rate:g}"
        return None

    def as_dict(self) -> dict[str, int]:
        return {"calls": self.calls, "errors": self.errors, "timeouts": self.timeouts, "slow_calls": self.slow_calls}


@dataclass(frozen=True, slots=True)
class Transition:
    """A breaker opened (`state=open`) or closed (`state=closed`)."""

    provider: str
    state: BreakerState
    reason: str
    stats: WindowStats
    at: float
    cooldown_s: float


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the check before a call decided, and the state it saw."""

    allowed: bool
    state: BreakerState


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    provider: str
    state: BreakerState
    stats: WindowStats
    opened_at: float | None
    retry_at: float | None  # when an open breaker lets a probe through


class BreakerStore(Protocol):
    """Where breaker state lives: this process (`InMemoryBreakerStore`) or Redis."""

    async def allow(self, provider: str, now: float) -> Verdict: ...

    async def record(self, provider: str, outcome: CallOutcome, now: float) -> tuple[BreakerState, Transition | None]: ...

    async def snapshot(self, provider: str, now: float) -> BreakerSnapshot: ...


@dataclass
class _Breaker:
    state: BreakerState = BreakerState.CLOSED
    opened_at: float = 0.0
    probe_until: float = 0.0
    buckets: dict[int, list[int]] = field(default_factory=dict)  # bucket -> [calls, errors, timeouts, slow]

    def window(self, policy: BreakerPolicy, now: float) -> WindowStats:
        oldest = policy.oldest_bucket(now)
        for stale in [b for b in self.buckets if b < oldest]:
            del self.buckets[stale]
        totals = [sum(counts[i] for counts in self.buckets.values()) for i in range(4)]
        return WindowStats(*totals)


class InMemoryBreakerStore:
    """One process's breakers: the embedded default, and the fallback while Redis is away.

    Every method runs without awaiting, so on one event loop each is atomic.
    """

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self._breakers: dict[str, _Breaker] = {}

    def _get(self, provider: str) -> _Breaker:
        return self._breakers.setdefault(provider, _Breaker())

    async def allow(self, provider: str, now: float) -> Verdict:
        breaker = self._get(provider)
        if breaker.state is BreakerState.CLOSED:
            return Verdict(True, breaker.state)
        if breaker.state is BreakerState.OPEN and now < breaker.opened_at + self.policy.cooldown_s:
            return Verdict(False, breaker.state)
        if breaker.state is BreakerState.HALF_OPEN and now < breaker.probe_until:
            return Verdict(False, breaker.state)  # another call is the probe
        breaker.state, breaker.probe_until = BreakerState.HALF_OPEN, now + self.policy.probe_lease_s
        return Verdict(True, breaker.state)

    async def record(self, provider: str, outcome: CallOutcome, now: float) -> tuple[BreakerState, Transition | None]:
        policy, breaker = self.policy, self._get(provider)
        if breaker.state is BreakerState.OPEN:
            return breaker.state, None  # a call that began before it opened: already decided
        if breaker.state is BreakerState.HALF_OPEN:
            if outcome.ok and not outcome.slow(policy):
                self._breakers[provider] = _Breaker()
                return BreakerState.CLOSED, Transition(
                    provider, BreakerState.CLOSED, "trial call succeeded", WindowStats(1, 0, 0, 0), now, policy.cooldown_s
                )
            breaker.state, breaker.opened_at, breaker.probe_until = BreakerState.OPEN, now, 0.0
            return breaker.state, None
        counts = breaker.buckets.setdefault(policy.bucket(now), [0, 0, 0, 0])
        counts[0] += 1
        counts[1] += 0 if outcome.ok else 1
        counts[2] += 1 if outcome.timed_out else 0
        counts[3] += 1 if outcome.slow(policy) else 0
        stats = breaker.window(policy, now)
        reason = stats.trips(policy)
        if reason is None:
            return breaker.state, None
        self._breakers[provider] = _Breaker(BreakerState.OPEN, opened_at=now)
        return BreakerState.OPEN, Transition(provider, BreakerState.OPEN, reason, stats, now, policy.cooldown_s)

    async def snapshot(self, provider: str, now: float) -> BreakerSnapshot:
        breaker = self._get(provider)
        opened = breaker.state is not BreakerState.CLOSED
        return BreakerSnapshot(
            provider, breaker.state, breaker.window(self.policy, now),
            breaker.opened_at if opened else None,
            breaker.opened_at + self.policy.cooldown_s if opened else None,
        )


class HealthObserver(Protocol):
    """Told what the breakers see (the app turns it into metrics and alerts)."""

    def state_seen(self, provider: str, state: BreakerState) -> None: ...

    def transition(self, transition: Transition) -> None: ...


class ProviderHealth(Protocol):
    """What the router asks before a call and tells after it."""

    async def allow(self, provider: str) -> bool: ...

    async def record(self, provider: str, outcome: CallOutcome) -> None: ...


class AlwaysHealthy:
    """No breaker: a router built without one (the local-only router, unit callers)."""

    async def allow(self, provider: str) -> bool:
        return True

    async def record(self, provider: str, outcome: CallOutcome) -> None:
        return None


class CircuitBreakers:
    """The breakers of every remote provider over one store; `local` never opens (it is
    the last resort, and it does not fail)."""

    def __init__(
        self,
        store: BreakerStore,
        *,
        observer: HealthObserver | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.observer = observer
        self._now = clock

    async def allow(self, provider: str) -> bool:
        if provider == LOCAL:
            return True
        verdict = await self.store.allow(provider, self._now())
        if self.observer is not None:
            self.observer.state_seen(provider, verdict.state)
        return verdict.allowed

    async def record(self, provider: str, outcome: CallOutcome) -> None:
        if provider == LOCAL:
            return
        state, transition = await self.store.record(provider, outcome, self._now())
        if self.observer is None:
            return
        self.observer.state_seen(provider, state)
        if transition is not None:
            log.warning("provider %s circuit %s: %s", provider, transition.state, transition.reason)
            self.observer.transition(transition)

    async def snapshots(self, providers: Iterable[str]) -> list[BreakerSnapshot]:
        now = self._now()
        return [await self.store.snapshot(name, now) for name in providers if name != LOCAL]
