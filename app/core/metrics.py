"""Prometheus series of the service (one process-wide registry, as the client intends)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

QUEUE_DEPTH = Gauge(
    "ai_workflow_queue_depth", "Chain runs waiting for a slot.", ["provider"]
)
RUNNING = Gauge("ai_workflow_running", "Chain runs holding a slot.", ["provider"])
CLUSTER_SLOT_LEASES = Gauge(
    "ai_scheduler_cluster_leases", "Cluster-wide slot leases (SCHEDULER_CLUSTER_MAX_CONCURRENCY) held by this process.",
    ["provider"],
)
CLUSTER_SLOT_FALLBACKS = Counter(
    "ai_scheduler_cluster_fallback_total",
    "Runs admitted under this process's limit only because Redis could not be reached for a cluster lease.",
    ["provider"],
)
DEGRADED = Counter(
    "ai_workflow_degraded_total", "Runs answered degraded, by reason.", ["chain", "reason"]
)
CANCELLED = Counter(
    "ai_workflow_cancelled_total", "Runs cancelled because their client went away.", ["chain"]
)
CACHE_LOOKUPS = Counter(
    "ai_cache_lookups_total", "Analysis cache lookups.", ["result"]  # exact, similar, miss
)
_FIRST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)
TIME_TO_FIRST_RESULT = Histogram(
    "ai_time_to_first_result_seconds",
    "Time from run start to its first streamed chunk (fast local signals, sources).",
    ["chain"], buckets=_FIRST_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "ai_time_to_first_token_seconds",
    "Time from run start to the first token of the model that served it (LLM, or the local composer).",
    ["chain", "provider"], buckets=_FIRST_BUCKETS,
)
RUN_LATENCY = Histogram(
    "ai_request_latency_seconds", "Run duration, queueing included.", ["chain", "outcome"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
EVENTS_PUBLISHED = Counter("ai_events_published_total", "Events pushed to channels.", ["type"])
WEBSOCKET_SESSIONS = Gauge("ai_websocket_sessions", "Open WebSocket sessions.")
SSE_SESSIONS = Gauge("ai_sse_sessions", "Open SSE insight feeds.")
TOKENS = Counter(
    "ai_tokens_total", "Tokens used, by tenant, feature (chain), provider, model and direction.",
    ["tenant", "feature", "provider", "model", "direction"],
)
SECURITY_EVENTS = Counter("ai_security_events_total", "Flagged security events.", ["kind"])
PROVIDER_CIRCUIT_STATE = Gauge(
    "ai_provider_circuit_state", "Provider circuit breaker as last seen by this process: 0 closed, 1 half-open, 2 open.",
    ["provider"],
)
PROVIDER_CIRCUIT_TRANSITIONS = Counter(
    "ai_provider_circuit_transitions_total", "Breaker transitions this process decided (one per transition cluster-wide).",
    ["provider", "state"],
)
ALERT_WEBHOOK_DELIVERIES = Counter(
    "ai_alert_webhook_deliveries_total", "Alert webhook attempts, by result (delivered, retried, failed).", ["result"]
)
SECURITY_EVENTS_SUPPRESSED = Counter(
    "ai_security_events_suppressed_total",
    "Security events counted but not written: their kind's or client's recording budget was spent.", ["kind"],
)
SECURITY_CHECKS_SKIPPED = Counter(
    "ai_security_checks_skipped_total",
    "Cross-tenant ownership checks skipped because too many were already running.", ["resource"],
)
