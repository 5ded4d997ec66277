"""The overload cache serves only this customer's analysis of a message with the same meaning."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from app.core.analysis_cache import AnalysisCache, CacheQuery, InMemoryAnalysisCache, RedisAnalysisCache, describe
from tests.support.servers import redis_server
from tests.support.stores import sqlite_keyring


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("cache-redis")) as url:
        yield url


@pytest.fixture(params=["memory", "redis"])
async def cache(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AnalysisCache]:
    if request.param == "memory":
        yield InMemoryAnalysisCache()
        return
    client = Redis.from_url(request.getfixturevalue("redis_url"))
    await client.flushdb()
    async with sqlite_keyring(tmp_path) as keys:
        yield RedisAnalysisCache(client, keys)
    await client.aclose()


def message(text: str, customer: str = "c-1") -> CacheQuery:
    return describe({"customer_id": customer, "text": text, "channel": "email", "customer_tier": "standard"})


ANALYSIS = {"intent": "cancellation_risk", "summary": "The customer may cancel."}


@pytest.mark.parametrize(
    "other",
    [
        "Please don't cancel my subscription today.",   # negation flips it (cosine 0.97)
        "Please cancel my subscription tomorrow.",       # another date
        "Please cancel my 3 subscriptions today.",       # another number
        "Please cancel my Pro subscription today.",      # a named product
    ],
)
async def test_a_similar_message_that_means_something_else_is_no_hit(cache: AnalysisCache, other: str) -> None:
    await cache.put("acme", message("Please cancel my subscription today."), ANALYSIS)
    assert await cache.get("acme", message(other)) is None


async def test_hits_stay_with_their_customer_and_tenant(cache: AnalysisCache) -> None:
    text = "Please cancel my subscription today."
    await cache.put("acme", message(text, "c-1"), ANALYSIS)
    assert await cache.get("acme", message(text, "c-2")) is None
    assert await cache.get("globex", message(text, "c-1")) is None
    hit = await cache.get("acme", message(text, "c-1"))
    assert hit is not None and hit.kind == "exact" and hit.output == ANALYSIS and hit.cached_from


async def test_a_paraphrase_with_the_same_meaning_is_a_similar_hit(cache: AnalysisCache) -> None:
    await cache.put("acme", message("Can you resend the onboarding checklist for the new hires?"), ANALYSIS)
    hit = await cache.get("acme", message("Could you resend the onboarding checklist for the new hires?"))
    assert hit is not None and hit.kind == "similar" and hit.similarity >= 0.9
