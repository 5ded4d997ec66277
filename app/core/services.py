"""The long-lived parts of one service instance, built once from the settings."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.analysis_cache import AnalysisCache, InMemoryAnalysisCache, RedisAnalysisCache
from app.core.processor import RealtimeProcessor
from app.core.rate_limit import RequestRateLimiter, limits_storage
from app.realtime.alerts import InMemorySentimentHistory, RedisSentimentHistory, SentimentHistory
from app.realtime.bus import EventBus, InProcessBus
from app.realtime.redis_bus import RedisStreamBus

from app.core.auth import TokenVerifier
from app.core.config import Settings
from app.store.audit import AuditLog
from app.store.database import create_engine, database_url
from app.store.knowledge import KnowledgeBase
from app.store.memory import ConversationMemory
from chains.embeddings import embed_one
from chains.providers.router import ProviderRouter
from chains.scoring.chain import ModelRouting
from chains.scoring.model import VERSIONS, LeadScoringModel, train_models


class TrainedModels(Mapping[str, LeadScoringModel]):
    """Scoring models trained on first use (about a second), so importing the app stays fast."""

    @cached_property
    def _models(self) -> dict[str, LeadScoringModel]:
        return train_models()

    def __getitem__(self, version: str) -> LeadScoringModel:
        return self._models[version]

    def __iter__(self) -> Iterator[str]:
        return iter(VERSIONS)

    def __len__(self) -> int:
        return len(VERSIONS)


@dataclass
class Services:
    settings: Settings
    verifier: TokenVerifier
    engine: AsyncEngine
    knowledge: KnowledgeBase
    memory: ConversationMemory
    router: ProviderRouter
    local_router: ProviderRouter
    scoring: ModelRouting
    redis: Redis | None
    bus: EventBus
    processor: RealtimeProcessor
    audit: AuditLog
    rate_limiter: RequestRateLimiter

    @classmethod
    def build(cls, settings: Settings) -> Services:
        engine = create_engine(database_url(settings.database_url, settings.sqlite_path))
        redis = Redis.from_url(settings.redis_url) if settings.redis_url else None
        bus: EventBus
        cache: AnalysisCache
        history: SentimentHistory
        if redis is not None:
            bus = RedisStreamBus(redis, queue_size=settings.push_buffer_events)
            cache, history = RedisAnalysisCache(redis), RedisSentimentHistory(redis)
        else:
            bus = InProcessBus(queue_size=settings.push_buffer_events)
            cache, history = InMemoryAnalysisCache(), InMemorySentimentHistory()
        audit = AuditLog(engine, interrupted_after_s=settings.audit_interrupted_after_s)
        return cls(
            settings=settings,
            verifier=TokenVerifier(settings),
            engine=engine,
            knowledge=KnowledgeBase(engine),
            memory=ConversationMemory(engine),
            router=ProviderRouter.from_settings(settings),
            local_router=ProviderRouter.local_only(settings),
            scoring=ModelRouting(
                TrainedModels(), settings.scoring_default_model, settings.scoring_tenant_models
            ),
            redis=redis,
            bus=bus,
            processor=RealtimeProcessor(
                provider=settings.primary_provider,
                max_concurrency=settings.scheduler_max_concurrency,
                queue_max_size=settings.scheduler_queue_max_size,
                deadline_s=settings.realtime_deadline_s,
                bus=bus,
                cache=cache,
                sentiment_history=history,
                audit=audit,
            ),
            audit=audit,
            rate_limiter=RequestRateLimiter(
                limits_storage(settings.redis_url),
                per_tenant=settings.rate_limit_tenant,
                per_user=settings.rate_limit_user,
            ),
        )

    def warm_up(self) -> None:
        """Loads what the first request would otherwise wait for: embeddings, scoring models."""
        embed_one("warm up")
        self.scoring.for_tenant("warm-up")

    async def close(self) -> None:
        await self.audit.close()
        await self.bus.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.engine.dispose()
