"""Cache of finished analyses per tenant *and customer*, for answering under overload.

An answer from the cache must describe the message it answers. So:

- entries are keyed by tenant and customer: one customer's analysis is never served
  (nor published) for another customer's message;
- the exact lookup matches the same normalised text, channel and tier;
- the semantic lookup (WordLlama cosine ≥ `SIMILARITY_THRESHOLD`) only accepts a
  message with the same *meaning signature*: the same negations, numbers and amounts,
  dates and named products. "Please cancel my subscription today." and "Please don't
  cancel my subscription today." embed at 0.97 but differ in negation: no hit;
- every hit carries `cached_from`, when the served analysis was made.

`InMemoryAnalysisCache` serves one replica (bounded per customer and in total);
`RedisAnalysisCache` is shared by all; its entries (analysis, embedding, signature)
are sealed with the tenant's data key, and its field names are keyed hashes of the
message, so Redis and its dumps hold no customer text nor a plain hash of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import numpy as np
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.crypto.envelope import DecryptionFailed
from app.crypto.keyring import Keyring
from chains.embeddings import embed_one
from chains.text import excerpt

log = logging.getLogger(__name__)

SIMILARITY_THRESHOLD = 0.9
PURPOSE = "analysis_cache.entry"
MAX_ENTRIES_PER_CUSTOMER = 50
MAX_CUSTOMERS = 20_000  # in memory: least recently used customers go first
TTL_S = 24 * 3600

_SPACES = re.compile(r"\s+")
_NEGATION = re.compile(
    r"\b(?:no|not|never|none|nothing|nobody|nowhere|neither|nor|without|cannot|stop|don'?t|"
    r"doesn'?t|didn'?t|won'?t|wouldn'?t|can'?t|couldn'?t|shouldn'?t|isn'?t|aren'?t|wasn'?t|"
    r"weren'?t|haven'?t|hasn'?t|hadn'?t|mustn'?t|needn'?t)\b|n't\b",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"\d[\d,.]*")
_NUMBER_WORDS = frozenset(
    "zero one two three four five six seven eight nine ten eleven twelve fifteen twenty thirty "
    "forty fifty hundred thousand million half double twice once".split()
)
_DATE_WORDS = frozenset(
    "today tonight tomorrow yesterday monday tuesday wednesday thursday friday saturday sunday "
    "week weekend month quarter year morning afternoon evening eod asap jan feb mar apr jun "
    "jul aug sep sept oct nov dec january february march april june july august september "
    "october november december".split()
)
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'&+.-]*")
_SENTENCE_START = re.compile(r"(?:^|[.!?]\s+|\n)\s*([A-Za-z][\w'&+.-]*)")


def normalised(text: str) -> str:
    return _SPACES.sub(" ", text.strip().lower())


def meaning_signature(text: str) -> str:
    """What two messages must share for one's analysis to stand for the other's.

    Negation count, numbers and amounts, date words, and named things (capitalised
    words not opening a sentence, product codes with digits). Coarse on purpose: a
    missed hit costs a fast local analysis, a wrong hit costs a wrong answer.
    """
    sentence_openers = {match.group(1) for match in _SENTENCE_START.finditer(text)}
    words = _WORD.findall(text)
    lowered = [word.lower().rstrip(".") for word in words]
    named = sorted(
        {
            word.lower().rstrip(".")
            for word in words
            if (word[0].isupper() and word not in sentence_openers and word.lower() != "i")
            or any(ch.isdigit() for ch in word)
        }
    )
    numbers = sorted({n.rstrip(".,").replace(",", "") for n in _NUMBER.findall(text)})
    numbers += sorted({word for word in lowered if word in _NUMBER_WORDS})
    dates = sorted({word for word in lowered if word in _DATE_WORDS})
    negations = len(_NEGATION.findall(text))
    return json.dumps([negations, numbers, dates, named], separators=(",", ":"))


def cache_key(payload: dict[str, Any]) -> str:
    material = f"{payload['channel']}|{payload.get('customer_tier', 'standard')}|{normalised(str(payload['text']))}"
    return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class CacheQuery:
    """What a lookup or an insert needs, computed once per message (CPU: run it off the
    loop with `describe`)."""

    customer_id: str
    key: str
    signature: str
    embedding: np.ndarray


def describe(payload: dict[str, Any]) -> CacheQuery:
    # Signature and embedding read the same bounded excerpt the local analysis reads.
    text = excerpt(str(payload["text"]))[0]
    return CacheQuery(str(payload["customer_id"]), cache_key(payload), meaning_signature(text), embed_one(text))


@dataclass(frozen=True, slots=True)
class CacheHit:
    kind: Literal["exact", "similar"]
    similarity: float
    output: dict[str, Any]
    cached_from: str  # ISO time the served analysis was made


@dataclass(frozen=True, slots=True)
class _Entry:
    embedding: np.ndarray
    signature: str
    output: dict[str, Any]
    cached_from: str

    def to_json(self) -> str:
        return json.dumps({"embedding": self.embedding.tobytes().hex(), "signature": self.signature,
                           "output": self.output, "cached_from": self.cached_from})

    @classmethod
    def from_json(cls, raw: str | bytes) -> _Entry:
        data = json.loads(raw)
        return cls(np.frombuffer(bytes.fromhex(data["embedding"]), dtype=np.float32),
                   data["signature"], data["output"], data["cached_from"])


class AnalysisCache(Protocol):
    async def get(self, tenant_id: str, query: CacheQuery) -> CacheHit | None: ...

    async def put(self, tenant_id: str, query: CacheQuery, output: dict[str, Any]) -> None: ...

    async def entries(self, tenant_id: str, customer_id: str) -> list[dict[str, Any]]:
        """The customer's cached analyses (a privacy export), as `{output, cached_from}`."""

    async def erase(self, tenant_id: str, customer_id: str | None = None) -> int:
        """Drops the customer's entries, or the whole tenant's; returns how many customers."""


def _exported(entry: _Entry) -> dict[str, Any]:
    return {"output": entry.output, "cached_from": entry.cached_from}


def _entry_for(query: CacheQuery, output: dict[str, Any]) -> _Entry:
    return _Entry(query.embedding, query.signature, output, datetime.now(UTC).isoformat())


def _best_similar(query: CacheQuery, entries: list[_Entry]) -> CacheHit | None:
    candidates = [entry for entry in entries if entry.signature == query.signature]
    if not candidates:
        return None
    similarity = np.stack([entry.embedding for entry in candidates]) @ query.embedding
    best = int(np.argmax(similarity))
    if float(similarity[best]) < SIMILARITY_THRESHOLD:
        return None
    entry = candidates[best]
    return CacheHit("similar", round(float(similarity[best]), 4), entry.output, entry.cached_from)


class InMemoryAnalysisCache:
    def __init__(
        self, max_entries_per_customer: int = MAX_ENTRIES_PER_CUSTOMER, max_customers: int = MAX_CUSTOMERS
    ) -> None:
        self._customers: OrderedDict[tuple[str, str], OrderedDict[str, _Entry]] = OrderedDict()
        self._max_entries = max_entries_per_customer
        self._max_customers = max_customers

    async def get(self, tenant_id: str, query: CacheQuery) -> CacheHit | None:
        entries = self._customers.get((tenant_id, query.customer_id))
        if not entries:
            return None
        exact = entries.get(query.key)
        if exact is not None:
            return CacheHit("exact", 1.0, exact.output, exact.cached_from)
        return _best_similar(query, list(entries.values()))

    async def entries(self, tenant_id: str, customer_id: str) -> list[dict[str, Any]]:
        return [_exported(entry) for entry in self._customers.get((tenant_id, customer_id), {}).values()]

    async def erase(self, tenant_id: str, customer_id: str | None = None) -> int:
        owners = [owner for owner in self._customers
                  if owner[0] == tenant_id and customer_id in (None, owner[1])]
        for owner in owners:
            del self._customers[owner]
        return len(owners)

    async def put(self, tenant_id: str, query: CacheQuery, output: dict[str, Any]) -> None:
        owner = (tenant_id, query.customer_id)
        entries = self._customers.setdefault(owner, OrderedDict())
        self._customers.move_to_end(owner)
        entries[query.key] = _entry_for(query, output)
        entries.move_to_end(query.key)
        while len(entries) > self._max_entries:
            entries.popitem(last=False)
        while len(self._customers) > self._max_customers:
            self._customers.popitem(last=False)


class RedisAnalysisCache:
    """Per tenant and customer: a hash of key → entry and a sorted set of keys by time.

    While Redis cannot be reached the cache is simply empty: a miss, never an error."""

    def __init__(self, redis: Redis, keys: Keyring, max_entries_per_customer: int = MAX_ENTRIES_PER_CUSTOMER) -> None:
        self.redis = redis
        self.keys = keys
        self._max = max_entries_per_customer

    @staticmethod
    def _keys(tenant_id: str, customer_id: str) -> tuple[str, str]:
        base = f"crm:cache:{tenant_id}:{customer_id}"
        return f"{base}:analyses", f"{base}:order"

    async def get(self, tenant_id: str, query: CacheQuery) -> CacheHit | None:
        try:
            return await self._get(tenant_id, query)
        except DecryptionFailed as error:  # the tenant's keys are gone (erased): nothing to serve
            log.warning("analysis cache entry does not open: %r", error)
            return None
        except (RedisError, OSError) as error:
            log.warning("analysis cache unavailable: %r", error)
            return None

    async def put(self, tenant_id: str, query: CacheQuery, output: dict[str, Any]) -> None:
        try:
            await self._put(tenant_id, query, output)
        except (RedisError, OSError) as error:
            log.warning("analysis cache unavailable: %r", error)

    async def entries(self, tenant_id: str, customer_id: str) -> list[dict[str, Any]]:
        """Unlike a lookup, an export fails loudly when Redis is away: an incomplete
        export must not look complete."""
        entries_key, _ = self._keys(tenant_id, customer_id)
        cipher = await self.keys.cipher(tenant_id)
        exported = []
        for raw in await self.redis.hvals(entries_key):
            try:
                exported.append(_exported(_Entry.from_json(cipher.open(PURPOSE, raw))))
            except DecryptionFailed as error:  # sealed under a destroyed key: nothing to export
                log.warning("analysis cache entry does not open, left out of the export: %r", error)
        return exported

    async def erase(self, tenant_id: str, customer_id: str | None = None) -> int:
        """Fails loudly when Redis is away, so an erasure is never reported done when it was not."""
        if customer_id is not None:
            return int(await self.redis.delete(*self._keys(tenant_id, customer_id)) > 0)
        keys = [key async for key in self.redis.scan_iter(match=f"crm:cache:{tenant_id}:*", count=500)]
        if keys:
            await self.redis.delete(*keys)
        return len(keys) // 2

    async def _get(self, tenant_id: str, query: CacheQuery) -> CacheHit | None:
        entries_key, _ = self._keys(tenant_id, query.customer_id)
        cipher = await self.keys.cipher(tenant_id)
        exact = await self.redis.hget(entries_key, cipher.fingerprint(PURPOSE, query.key))
        if exact is not None:
            entry = _Entry.from_json(cipher.open(PURPOSE, exact))
            return CacheHit("exact", 1.0, entry.output, entry.cached_from)
        raw = await self.redis.hvals(entries_key)
        return _best_similar(query, [_Entry.from_json(cipher.open(PURPOSE, value)) for value in raw])

    async def _put(self, tenant_id: str, query: CacheQuery, output: dict[str, Any]) -> None:
        entries_key, order_key = self._keys(tenant_id, query.customer_id)
        cipher = await self.keys.cipher(tenant_id)
        key = cipher.fingerprint(PURPOSE, query.key)
        sealed = cipher.seal(PURPOSE, _entry_for(query, output).to_json().encode())
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(entries_key, key, sealed)
            pipe.zadd(order_key, {key: time.time()})
            pipe.zrange(order_key, 0, -self._max - 1)
            pipe.expire(entries_key, TTL_S)
            pipe.expire(order_key, TTL_S)
            _, _, stale, _, _ = await pipe.execute()
        if stale:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hdel(entries_key, *stale)
                pipe.zrem(order_key, *stale)
                await pipe.execute()
