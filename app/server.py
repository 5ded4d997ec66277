"""Application wiring: `create_app()` assembles the service; no logic lives here."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI
from fastapi.telemetry import TelemetryConfig

from app.api.chains import API_PREFIX, INTERACTIONS_PATH, add_chain_routes, build_chains
from app.api.errors import add_exception_handlers, error_payload
from app.api import streaming
from app.api.access import guard_request
from app.api.feed_dispatch import FeedSockets
from app.api.request_body import RequestBodyMiddleware
from app.api.routes import console, documents, health, metrics, privacy, providers, scoring, usage
from app.api.routes import workflows as workflows_routes
from app.api.signin import TokenSignInMiddleware
from app.api.stream_errors import StreamErrorMiddleware
from app.api.stream_writes import CoalescedStreamWrites
from app.core.config import Settings, get_settings
from app.core.logging import configure_logging
from app.core.runtime import hand_threads_the_gil_sooner, tune_gc_once
from app.core.services import Services
from app.core.tracing import Tracing
from app.core.workflows import WorkflowRunner
from app.store.database import migrate

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("app")
# FastAPI's built-in telemetry stays off: request spans come from app.core.tracing, whose
# switch is TRACING_ENABLED (and off, a request does not even look for a global provider).
NATIVE_TELEMETRY_OFF: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}
def announce_dev_sign_in(services: Services) -> None:
    """With a generated secret, print a ready token and a signed-in playground link."""
    if not services.verifier.secret_is_generated:
        return
    settings = services.settings
    token = services.verifier.mint(
        tenant_id="dev-tenant",
        user_id="dev-user",
        roles=("admin", "manager", "rep"),
        ttl_s=settings.auth_dev_token_ttl_s,
    )
    log.warning(
        "development auth: secret generated in %s (mode 0600)\n"
        "  dev token (tenant dev-tenant, 12 h): %s\n"
        "  signed-in playground: %s%s/playground/?token=%s",
        settings.auth_secret_file, token, settings.base_url, INTERACTIONS_PATH, token,
    )


def create_app(settings: Settings | None = None, *, span_exporter: SpanExporter | None = None) -> FastAPI:
    """Wires the service. Builds objects only: files, secrets, tables and connections
    are made in the lifespan (or on first use), so importing this module has no effects.
    `span_exporter` replaces OTLP when TRACING_ENABLED (tests: the SDK's in-memory one)."""
    settings = settings or get_settings()
    tracing = Tracing.from_settings(settings, span_exporter)
    services = Services.build(settings, tracer=tracing.tracer)
    chains = build_chains(services)
    workflows = WorkflowRunner(
        services.workflow_runs, {path.removeprefix(API_PREFIX): chain for path, chain in chains.items()},
        services.bus, process_id=services.liveness.process_id, alive=services.liveness.alive,
        describe_error=error_payload, max_concurrency=settings.workflow_max_concurrency,
        max_active_per_tenant=settings.workflow_max_active_per_tenant,
        max_running_per_tenant=settings.workflow_max_running_per_tenant,
        retry_after_s=settings.workflow_retry_after_s, sweep_s=settings.workflow_sweep_s,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging()
        tracing.start()
        await migrate(services.engine)
        interrupted = await services.liveness.start()
        if interrupted:
            log.warning("marked %d runs of stopped processes as interrupted", interrupted)
        announce_dev_sign_in(services)
        services.warm_up()
        await services.cpu.start()
        await services.liveness.beat()
        services.retention.start()
        workflows.start_supervising()
        tune_gc_once()
        hand_threads_the_gil_sooner(settings)
        yield
        await workflows.stop()  # before the process stops beating: its runs are handed over
        await services.close()
        tracing.shutdown()  # exports the spans still pending

    app = FastAPI(
        title=settings.app_name,
        description="Real-time interaction analysis, explainable lead scoring and grounded insights chat.",
        lifespan=lifespan,
        dependencies=[Depends(guard_request)],  # deny by default: see app.api.access
        telemetry=NATIVE_TELEMETRY_OFF,
    )
    app.state.services = services
    app.state.tracing = tracing
    app.state.workflows = workflows
    add_exception_handlers(app)
    app.add_middleware(StreamErrorMiddleware)
    app.add_middleware(  # outside it: see app.api.stream_writes
        CoalescedStreamWrites, window_s=settings.stream_write_window_ms / 1000
    )
    app.add_middleware(
        RequestBodyMiddleware,
        max_body_bytes=settings.request_max_body_bytes,
        body_timeout_s=settings.request_body_timeout_s,
    )
    app.add_middleware(
        TokenSignInMiddleware, verifier=services.verifier, cookie_name=settings.auth_cookie_name
    )
    app.add_middleware(FeedSockets, feeds=streaming.FEEDS)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(documents.router)
    app.include_router(usage.router)
    app.include_router(providers.router)
    app.include_router(console.router)
    app.include_router(streaming.router)
    app.include_router(workflows_routes.router)
    add_chain_routes(app, chains)
    # After the chains: LangServe's endpoints under /api/v1/ai/scoring/leads/ match first.
    app.include_router(scoring.router)
    app.include_router(privacy.router)
    tracing.instrument(app)  # outermost: the request span covers every middleware
    return app


app = create_app()
