"""Span names, attributes and helpers shared by the chains and the app (README, "Tracing").

Only the OpenTelemetry *API* is used here; `app.core.tracing` sets up the SDK when
`TRACING_ENABLED`. Off, every component holds `NO_TRACER`, whose spans are one shared
non-recording object: about a microsecond per span call (bench/tracing_bench.py).

Attributes name the run, never its content: chain, tenant id, provider, model, queue
priority and outcome, token counts. No message text, prompt, answer, token or user id,
and errors are recorded by type only (an exception's message may quote the input).
"""

from __future__ import annotations

from opentelemetry.trace import NoOpTracer, Span, Status, StatusCode, Tracer

NO_TRACER: Tracer = NoOpTracer()

CHAIN = "ai.chain"
TENANT = "ai.tenant_id"
PROVIDER = "ai.provider"
MODEL = "ai.model"
FAILOVER_ATTEMPT = "ai.failover_attempt"  # 1 for the first provider tried in a run
QUEUE_PRIORITY = "ai.queue.priority"
QUEUE_OUTCOME = "ai.queue.outcome"  # granted, deadline, queue_full, predicted_wait, cancelled
OUTCOME = "ai.outcome"
FIRST_MODEL_TOKEN = "first_model_token"  # an event on `provider_call`


def failed(span: Span, error: BaseException) -> None:
    """Marks a span failed by the error's type alone."""
    name = type(error).__name__
    span.set_attribute("error.type", name)
    span.set_status(Status(StatusCode.ERROR, name))
