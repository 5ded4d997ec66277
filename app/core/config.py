"""The service's settings: every variable of the public contract, read once, here."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from limits import parse as parse_limit
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.crypto.envelope import MIN_MASTER_KEY_CHARS
from chains.providers.settings import ProviderSettings


class Settings(BaseSettings, ProviderSettings):
    """Environment variables (and `.env`) under the names the contract fixes.

    The LLM provider settings (`LLM_PROVIDERS`, timeouts, keys and models) are declared
    in `ProviderSettings`, which this class inherits, so chains can take them without
    importing the app.
    """

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    app_name: str = "CRM real-time AI"
    app_env: Literal["development", "production", "test"] = "development"
    data_dir: Path = Path("./var")
    # Trained local models, keyed by the hash of their corpus (default: DATA_DIR/models).
    model_cache_dir: Path | None = None
    # Where the service listens (scripts/run.sh passes them to uvicorn) and the address
    # clients reach it at (behind a proxy: the proxy's). The start-up sign-in link and
    # the WebSocket Origin check use `base_url`.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    public_url: str | None = None

    # Identity.
    auth_jwt_secret: SecretStr | None = None
    auth_jwks_url: str | None = None
    auth_issuer: str | None = None
    auth_audience: str | None = None
    auth_cookie_name: str = "crm_session"
    auth_leeway_s: float = 30.0
    auth_jwks_cache_s: float = Field(
        default=300.0, gt=0, le=3600,
        description="How long the identity provider's key set is kept: a key it withdraws stops verifying "
                    "tokens this much later (plus AUTH_VERIFIED_CACHE_S for a token verified just before).")
    auth_jwks_stale_s: float = Field(
        default=3600.0, ge=0, le=86_400,
        description="While the identity provider's key endpoint cannot be reached, how long after it was fetched "
                    "the last key set it served is still used (a key withdrawn meanwhile verifies until then); "
                    "0: not at all, every token not yet verified is refused.")
    auth_verified_cache_s: float = Field(
        default=60.0, ge=0, le=300,
        description="How long a verified token is trusted without checking its signature again (its expiry is "
                    "still checked on every request); 0 verifies every time.")
    auth_dev_token_ttl_s: int = 12 * 3600

    # Shared state and durable data.
    redis_url: str | None = None
    redis_max_connections: int = Field(default=64, ge=2, description="One pool for every Redis use of a process.")
    redis_pool_timeout_s: float = Field(default=2.0, gt=0, description="How long a caller waits for a free connection.")
    redis_socket_timeout_s: float = Field(default=2.0, gt=0, description="Connect and reply timeout: an outage is noticed fast.")
    database_url: str | None = None
    database_pool_size: int = Field(default=10, ge=1)
    database_max_overflow: int = Field(default=20, ge=0)
    database_pool_timeout_s: float = Field(default=5.0, gt=0, description="Then a retryable 503.")
    database_lock_timeout_s: float = Field(
        default=15.0, ge=0,
        description="PostgreSQL cancels a statement that waits longer for a lock (a migration's, a stuck "
                    "session's): a retryable 503, not a request and a pooled connection held for as long as "
                    "the lock lasts. A statement slow for other reasons is not cut. 0: no limit.")
    database_connect_timeout_s: float = Field(
        default=5.0, ge=2,
        description="A new PostgreSQL connection not ready by then (a hung server, a host gone), or a pooled "
                    "one not answering the pool's check on checkout, fails: a retryable 503, not a request held "
                    "for psycopg's 130 s or for as long as the server hangs. Whole seconds, at least 2 (libpq's rule).")
    sqlite_inline: bool = Field(
        default=True,
        description="Without DATABASE_URL: the audit trail's, history's and scores' short SQLite work runs on the "
                    "event loop's thread when SQLite answers at once, and through the driver's thread when another "
                    "writer holds the lock. Off: always the driver's thread (several trips a statement).")

    # Lead scoring A/B routing: "tenant=version" pairs; unnamed tenants get the default.
    scoring_default_model: str = "logreg-v2"
    scoring_tenant_models: Annotated[dict[str, str], NoDecode] = {}
    # Learning from outcomes (README, "Lead scoring that learns from outcomes").
    scoring_min_outcomes: int = Field(
        default=200, ge=20, description="Leads with an outcome (both kinds present) before a tenant's own model takes over."
    )
    scoring_retrain_every: int = Field(default=100, ge=1, description="Then retrain after this many new ones.")
    scoring_max_training_outcomes: int = Field(
        default=20_000, ge=100, description="A tenant model learns from its most recent outcomes, at most this many."
    )
    scoring_model_check_s: float = Field(
        default=5.0, gt=0, description="How often a process checks for a tenant's new model version (a new one serves within this)."
    )
    scoring_keep_versions: int = Field(default=10, ge=1, description="Tenant model versions kept; older ones are deleted.")
    scoring_test_min_outcomes: int = Field(
        default=30, ge=10, description="Outcomes a model A/B test needs (and at least 5 of each kind)."
    )

    # Real-time processing.
    realtime_deadline_s: float = 2.0
    scheduler_max_concurrency: int | None = Field(
        default=None, ge=1, description="Slots per process for the primary provider."
    )
    scheduler_cluster_max_concurrency: int | None = Field(
        default=None, ge=1,
        description="With REDIS_URL: slots of the primary provider across all replicas (its rate limit is one number).",
    )
    scheduler_cluster_lease_ttl_s: float = Field(
        default=10.0, gt=0, description="A dead replica's cluster slots come back after this (live ones renew theirs)."
    )
    scheduler_queue_max_size: int = Field(default=1_000, ge=0)
    cpu_workers: int | None = Field(
        default=None, ge=1, description="Processes for the embedded analysis (default: one per core)."
    )
    cpu_jobs_per_worker: int = Field(
        default=4, ge=1,
        description="Analysis jobs handed to each worker at once, so it never idles while a busy event loop "
        "picks the next; another tenant's job waits behind at most this many per worker.",
    )

    cpu_inline_max_chars: int = Field(
        default=500, ge=0,
        description="A message analysed (or described for the cache) on the event loop when this short: "
        "cheaper there than a round trip through the pool, and no queue behind a burst. 0: always the pool.",
    )

    thread_switch_interval_ms: float = Field(
        default=1.0, gt=0, le=100,
        description="How soon a helper thread (analysis pool, SQLite) gets the GIL from a busy event loop (sys.setswitchinterval).",
    )

    stream_write_window_ms: float = Field(
        default=5.0, ge=0, le=100,
        description="A chain stream's writer, woken by the first event queued after a write, waits this long "
        "and writes everything queued as one (app.api.stream_writes); the first data event is never held. "
        "0: at the loop's next turn.",
    )

    # Push transports.
    ws_auth_timeout_s: float = 5.0
    # A client's WebSocket message (its auth token included) is refused unparsed past this.
    ws_message_max_chars: int = Field(default=65_536, ge=4_096)
    ws_send_timeout_s: float = Field(default=10.0, gt=0, description="A send that cannot complete in time ends the session with 1013.")
    ws_slow_close_wait_s: float = Field(default=30.0, gt=0, description="How long the 1013 close frame waits for a slow reader.")
    # Besides same-origin pages and PUBLIC_URL's, origins whose pages may open
    # cookie-authenticated WebSockets.
    allowed_origins: Annotated[list[str], NoDecode] = []
    push_heartbeat_s: float = 15.0
    push_buffer_events: int = Field(default=256, ge=1)

    # Abuse resistance and accounting.
    request_max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    request_body_timeout_s: float = Field(default=10.0, gt=0, description="The whole body must arrive within this.")
    # Read by app.api.http_protocol (uvicorn --http app.api.http_protocol:GuardedHttpToolsProtocol).
    http_header_timeout_s: float = Field(default=10.0, gt=0)
    http_max_header_bytes: int = Field(default=64 * 1024, ge=4096)
    rate_limit_tenant: str = "600/minute"
    rate_limit_user: str = "120/minute"
    audit_interrupted_after_s: float = Field(
        default=900.0, ge=0, description="Runs recorded before processes had ids: 'running' this long means dead."
    )
    audit_heartbeat_s: float = Field(default=10.0, gt=0, description="How often a process says it is alive.")
    audit_process_dead_after_s: float = Field(
        default=30.0, gt=0, description="A process silent this long is dead; its runs become 'interrupted'."
    )
    # Encryption at rest (README, Security). Unset in development: a key generated once
    # in DATA_DIR (mode 0600). Retired keys still unwrap until `python -m app keys rotate`.
    data_encryption_key: SecretStr | None = None
    data_encryption_old_keys: Annotated[list[SecretStr], NoDecode] = []
    # Tokens with the `operator` role act as the service's operators (tenant erasure, every
    # tenant's security events) only when they belong to this tenant.
    operator_tenant: str = Field(default="operator", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
    data_key_cache_s: float = Field(
        default=60.0, gt=0, description="How long a replica keeps a tenant's unwrapped data keys before re-reading them."
    )
    # Retention: rows older than this many days are purged every RETENTION_SWEEP_S (0 keeps
    # forever). The audit trail is chained and kept: see README, Security.
    retention_conversation_days: int = Field(default=365, ge=0)
    retention_interactions_days: int = Field(default=730, ge=0)
    retention_lead_scores_days: int = Field(default=730, ge=0)
    retention_workflows_days: int = Field(default=30, ge=0, description="Background runs (their events live 24 h).")
    retention_sweep_s: float = Field(default=3600.0, gt=0)
    # Background runs (README, "Background runs").
    workflow_max_concurrency: int = Field(default=64, ge=1, description="Runs one process executes at once; more wait queued.")
    workflow_max_active_per_tenant: int = Field(
        default=100, ge=1, description="Queued plus running runs per tenant, cluster-wide; past it a POST answers 429."
    )
    workflow_max_running_per_tenant: int = Field(
        default=16, ge=1, description="Of one process's WORKFLOW_MAX_CONCURRENCY, at most this many run one tenant's runs."
    )
    workflow_retry_after_s: int = Field(default=5, ge=1, description="Retry-After of that 429.")
    workflow_sweep_s: float = Field(
        default=0.5, gt=0,
        description="How often a replica looks for cancel requests of its runs, runs of dead replicas and re-queued runs.",
    )
    # Model-health alerts (README, "Model health"): also POSTed here, signed, when set.
    alert_webhook_url: str | None = None
    alert_webhook_secret: SecretStr | None = None
    alert_webhook_max_attempts: int = Field(default=6, ge=1, le=20, description="Then the alert is given up (logged, counted).")
    alert_webhook_backoff_s: float = Field(default=1.0, gt=0, description="First retry pause; doubles, at most 60 s.")
    alert_webhook_timeout_s: float = Field(default=10.0, gt=0, description="Per delivery attempt.")
    security_log_per_client: str = Field(
        default="30/minute", description="Security events recorded per kind and client address; more are only counted."
    )
    security_log_per_kind: str = Field(
        default="600/minute", description="Security events recorded per kind from all clients; more are only counted."
    )
    metrics_enabled: bool = True
    metrics_token: SecretStr | None = None
    metrics_public: bool = False  # production: an explicit opt-out of METRICS_TOKEN
    # OpenTelemetry tracing (README, "Tracing"): the one switch. Where spans go is the SDK's
    # standard environment (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_HEADERS,
    # OTEL_TRACES_SAMPLER...), read by the SDK itself.
    tracing_enabled: bool = Field(default=False, description="Off: no tracer provider, no middleware, no-op spans.")
    otel_service_name: str = "crm-realtime-ai"  # the SDK's own variable name, read here

    @field_validator("allowed_origins", "data_encryption_old_keys", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("data_encryption_key", "data_encryption_old_keys")
    @classmethod
    def _long_enough(cls, value: SecretStr | list[SecretStr] | None) -> object:
        for key in value if isinstance(value, list) else [value] if value is not None else []:
            if len(key.get_secret_value()) < MIN_MASTER_KEY_CHARS:
                raise ValueError(f"data encryption keys must be at least {MIN_MASTER_KEY_CHARS} characters")
        return value

    @field_validator("rate_limit_tenant", "rate_limit_user")
    @classmethod
    def _a_limit_of_at_least_one(cls, value: str) -> str:
        """A limit `limits` reads, that lets something through: `0/minute` would refuse
        every request, each as a batch too large."""
        if parse_limit(value).amount < 1:
            raise ValueError("a rate limit must allow at least 1 request per window")
        return value

    @field_validator("scoring_tenant_models", mode="before")
    @classmethod
    def _split_tenant_models(cls, value: object) -> object:
        if isinstance(value, str):
            pairs = (part.split("=", 1) for part in value.split(",") if "=" in part)
            return {tenant.strip(): version.strip() for tenant, version in pairs}
        return value

    @model_validator(mode="after")
    def _webhook_is_signed(self) -> Settings:
        # An unsigned alert could be forged by anyone who learns the receiver's URL.
        if self.alert_webhook_url and self.alert_webhook_secret is None:
            raise ValueError("ALERT_WEBHOOK_URL needs ALERT_WEBHOOK_SECRET (deliveries are signed with it)")
        return self

    @model_validator(mode="after")
    def _production_needs_real_auth(self) -> Settings:
        # A generated development secret lives on one disk: replicas would disagree and
        # anyone with the data dir could mint tokens, so production must be configured.
        if self.app_env == "production":
            if self.auth_jwt_secret is None and self.auth_jwks_url is None:
                raise ValueError(
                    "APP_ENV=production refuses to start without AUTH_JWT_SECRET or AUTH_JWKS_URL"
                )
            secret = self.auth_jwt_secret
            if secret is not None and len(secret.get_secret_value()) < 32:
                raise ValueError("AUTH_JWT_SECRET must be at least 32 characters in production")
            # Without both, a token of any project of the same identity provider (any
            # Firebase project) would verify, with the tenant and roles its owner chose.
            if self.auth_jwks_url is not None and not (self.auth_issuer and self.auth_audience):
                raise ValueError("AUTH_JWKS_URL in production needs AUTH_ISSUER and AUTH_AUDIENCE")
            # A generated key sits beside the data it protects: no protection at all.
            if self.data_encryption_key is None:
                raise ValueError("APP_ENV=production refuses to start without DATA_ENCRYPTION_KEY")
            if self.metrics_enabled and self.metrics_token is None and not self.metrics_public:
                raise ValueError(
                    "production needs METRICS_TOKEN for /metrics (it names tenants), "
                    "or METRICS_PUBLIC=true to serve it openly, or METRICS_ENABLED=false"
                )
        return self

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    @property
    def model_cache_path(self) -> Path:
        return self.model_cache_dir or self.data_dir / "models"

    @property
    def auth_secret_file(self) -> Path:
        return self.data_dir / "auth_secret"

    @property
    def encryption_key_file(self) -> Path:
        return self.data_dir / "data_encryption_key"

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "crm_ai.sqlite3"


@lru_cache
def get_settings() -> Settings:
    return Settings()
