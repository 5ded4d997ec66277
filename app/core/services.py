"""The long-lived parts of one service instance, built once from the settings."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property

from limits.aio.storage import Storage
from opentelemetry.trace import Tracer
from redis.asyncio import BlockingConnectionPool, Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.alert_webhook import AlertWebhook
from app.core.analysis_cache import AnalysisCache, InMemoryAnalysisCache, RedisAnalysisCache
from app.core.privacy import Privacy, RetentionSweeper
from app.core.processor import RealtimeProcessor
from app.core.provider_alerts import ProviderAlerts
from app.core.rate_limit import RequestRateLimiter, redis_limits_storage
from app.realtime.alerts import InMemorySentimentHistory, RedisSentimentHistory, SentimentHistory
from app.realtime.bus import EventBus, InProcessBus
from app.realtime.redis_bus import RedisStreamBus

from app.core.auth import TokenVerifier
from app.core.encryption_keys import keyring, redis_keyring
from app.crypto.keyring import Keyring
from app.core.cpu_pool import FairCpuPool
from app.core.cross_tenant import CrossTenantWatch
from app.core.security_log import SecurityLog
from app.core.config import Settings
from app.core.scoring_comparison import ModelComparison
from app.core.scoring_models import TenantScoringModels
from app.core.scoring_training import TenantModelTrainer
from app.store.audit import AuditLog
from app.store.liveness import ProcessLiveness
from app.store.database import create_engine, database_url
from app.store.database_work import database_work
from app.store.customer_records import CustomerRecords
from app.store.interactions import InteractionLog
from app.store.knowledge import KnowledgeBase
from app.store.lead_outcomes import OutcomeLog
from app.store.lead_scores import ScoreLog
from app.store.memory import ConversationMemory
from app.store.provider_health import RedisBreakerStore
from app.store.ownership import ResourceOwnership
from app.store.workflow_runs import WorkflowRuns
from app.store.scoring_models import ModelRegistry
from chains.embeddings import embed_one
from chains.local.classifier import classifier as interaction_classifier
from chains.local.classifier import configure as configure_classifier
from chains.safety import warm_up as warm_guard
from chains.providers.health import BreakerPolicy, BreakerStore, CircuitBreakers, InMemoryBreakerStore
from chains.providers.router import ProviderRouter
from chains.scoring.chain import ModelRouting
from chains.scoring.model import LeadScoringModel
from chains.scoring.priors import VERSIONS, train_models
from chains.spans import NO_TRACER


class TrainedModels(Mapping[str, LeadScoringModel]):
    """The shared prior scoring models, trained on first use (about a second), so
    importing the app stays fast."""

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
    keys: Keyring
    redis_keys: Keyring | None
    knowledge: KnowledgeBase
    memory: ConversationMemory
    interactions: InteractionLog
    router: ProviderRouter
    local_router: ProviderRouter
    breakers: CircuitBreakers | None
    provider_alerts: ProviderAlerts
    scoring: TenantScoringModels
    scores: ScoreLog
    outcomes: OutcomeLog
    trainer: TenantModelTrainer
    model_comparison: ModelComparison
    redis: Redis | None
    bus: EventBus
    processor: RealtimeProcessor
    audit: AuditLog
    liveness: ProcessLiveness
    rate_limiter: RequestRateLimiter
    cpu: FairCpuPool
    privacy: Privacy
    retention: RetentionSweeper
    security_log: SecurityLog
    cross_tenant: CrossTenantWatch
    workflow_runs: WorkflowRuns
    tracer: Tracer = NO_TRACER  # the service's own spans (app.core.tracing): no-op unless TRACING_ENABLED

    @classmethod
    def build(cls, settings: Settings, *, tracer: Tracer = NO_TRACER) -> Services:
        engine = create_engine(
            database_url(settings.database_url, settings.sqlite_path),
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_max_overflow,
            pool_timeout_s=settings.database_pool_timeout_s,
            lock_timeout_s=settings.database_lock_timeout_s,
            connect_timeout_s=settings.database_connect_timeout_s,
            inline_sqlite=settings.sqlite_inline,
        )
        keys = keyring(settings, engine)
        redis_keys: Keyring | None = None
        redis: Redis | None = None
        limits: Storage | None = None
        if settings.redis_url:
            # One pool for every Redis use (bus, cache, alerts, rate limits). A caller
            # that finds it busy waits up to REDIS_POOL_TIMEOUT_S instead of failing.
            pool = BlockingConnectionPool.from_url(
                settings.redis_url,
                max_connections=settings.redis_max_connections,
                timeout=settings.redis_pool_timeout_s,
                socket_connect_timeout=settings.redis_socket_timeout_s,
                socket_timeout=settings.redis_socket_timeout_s,
                health_check_interval=30,
                retry_on_timeout=False,
            )
            redis = Redis(connection_pool=pool)
            redis_keys = redis_keyring(keys, redis, ttl_s=settings.data_key_cache_s)
            limits = redis_limits_storage(settings.redis_url, pool)
        bus: EventBus
        cache: AnalysisCache
        history: SentimentHistory
        if redis is not None:
            assert redis_keys is not None
            bus = RedisStreamBus(redis, redis_keys, queue_size=settings.push_buffer_events)
            cache, history = RedisAnalysisCache(redis, redis_keys), RedisSentimentHistory(redis)
        else:
            bus = InProcessBus(queue_size=settings.push_buffer_events)
            cache, history = InMemoryAnalysisCache(), InMemorySentimentHistory()
        liveness = ProcessLiveness(
            engine, heartbeat_s=settings.audit_heartbeat_s, dead_after_s=settings.audit_process_dead_after_s,
            interrupted_after_s=settings.audit_interrupted_after_s,
        )
        audit = AuditLog(engine, keys, interrupted_after_s=settings.audit_interrupted_after_s,
                         process_id=liveness.process_id)
        cpu = FairCpuPool.configured(settings)
        scoring = TenantScoringModels(
            ModelRouting(TrainedModels(), settings.scoring_default_model, settings.scoring_tenant_models),
            ModelRegistry(engine, keep=settings.scoring_keep_versions),
            check_every_s=settings.scoring_model_check_s,
        )
        outcomes = OutcomeLog(engine, keys)
        knowledge = KnowledgeBase(engine, keys)
        records = CustomerRecords(engine, keys)
        workflow_runs = WorkflowRuns(engine, keys)
        provider_alerts = ProviderAlerts(bus, audit, _alert_webhook(settings))
        breakers: CircuitBreakers | None = None
        if settings.llm_breaker_enabled:
            policy = BreakerPolicy.from_settings(settings)
            store: BreakerStore = RedisBreakerStore(redis, policy) if redis is not None else InMemoryBreakerStore(policy)
            breakers = CircuitBreakers(store, observer=provider_alerts)
        security_log = SecurityLog(audit, per_client=settings.security_log_per_client,
                                   per_kind=settings.security_log_per_kind)
        return cls(
            settings=settings,
            verifier=TokenVerifier(settings),
            engine=engine,
            keys=keys,
            redis_keys=redis_keys,
            knowledge=knowledge,
            memory=ConversationMemory(engine, keys),
            interactions=InteractionLog(engine, keys),
            router=ProviderRouter.from_settings(settings, health=breakers, tracer=tracer),
            local_router=ProviderRouter.local_only(settings, tracer=tracer),
            breakers=breakers,
            provider_alerts=provider_alerts,
            scoring=scoring,
            scores=ScoreLog(engine, keys),
            outcomes=outcomes,
            trainer=TenantModelTrainer(
                outcomes=outcomes, registry=scoring.registry, models=scoring, cpu=cpu, audit=audit,
                min_outcomes=settings.scoring_min_outcomes, retrain_every=settings.scoring_retrain_every,
                max_outcomes=settings.scoring_max_training_outcomes,
            ),
            model_comparison=ModelComparison(
                models=scoring, outcomes=outcomes, cpu=cpu, min_outcomes=settings.scoring_test_min_outcomes,
                max_outcomes=settings.scoring_max_training_outcomes,
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
                redis=redis,
                cluster_max_concurrency=settings.scheduler_cluster_max_concurrency,
                cluster_lease_ttl_s=settings.scheduler_cluster_lease_ttl_s,
            ),
            audit=audit,
            liveness=liveness,
            rate_limiter=RequestRateLimiter(
                limits,
                per_tenant=settings.rate_limit_tenant,
                per_user=settings.rate_limit_user,
            ),
            cpu=cpu,
            privacy=Privacy(records=records, cache=cache, bus=bus, sentiment=history, knowledge=knowledge,
                            keys=keys, redis_keys=redis_keys, audit=audit, workflow_runs=workflow_runs),
            retention=RetentionSweeper(records, {
                "conversation": settings.retention_conversation_days,
                "interactions": settings.retention_interactions_days,
                "lead_scores": settings.retention_lead_scores_days,
                "workflows": settings.retention_workflows_days,
            }, every_s=settings.retention_sweep_s),
            security_log=security_log,
            cross_tenant=CrossTenantWatch(ResourceOwnership(engine), security_log),
            workflow_runs=workflow_runs,
            tracer=tracer,
        )

    def warm_up(self) -> None:
        """Loads what the first request would otherwise wait for: embeddings, the guard's
        Unicode tables, the interaction models (trained here at the first start, then read
        from MODEL_CACHE_DIR by this process and its workers), scoring models; and the
        master key (a development one is generated here at the first start)."""
        _ = self.keys.masters
        embed_one("warm up")
        warm_guard()
        configure_classifier(self.settings.model_cache_path)
        interaction_classifier()
        self.scoring.prior_for("warm-up")

    async def close(self) -> None:
        await self.retention.stop()
        await self.provider_alerts.close()
        await self.trainer.close()
        self.cpu.close()
        await self.scores.close()
        await self.interactions.close()
        await self.cross_tenant.drain()
        await self.audit.close()
        await self.liveness.stop()
        await self.bus.close()
        await self.processor.close()
        if self.redis is not None:
            await self.redis.aclose()
        await database_work(self.engine).close()
        await self.engine.dispose()


def _alert_webhook(settings: Settings) -> AlertWebhook | None:
    if not settings.alert_webhook_url or settings.alert_webhook_secret is None:
        return None
    return AlertWebhook(
        settings.alert_webhook_url, settings.alert_webhook_secret.get_secret_value(),
        max_attempts=settings.alert_webhook_max_attempts, backoff_s=settings.alert_webhook_backoff_s,
        timeout_s=settings.alert_webhook_timeout_s,
    )
