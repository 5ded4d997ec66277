"""The contract's chains on LangServe: every endpoint behind the guard, identity injected.

`per_req_config_modifier` runs for invoke, batch, stream, stream_log and stream_events
(the `/c/{hash}/` variants too) after the client's config was parsed, so writing
identity there overwrites whatever a client sent. Identity is never a declared
configurable field, so LangServe's schema drops client attempts before that anyway.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Request
from langchain_core.runnables import Runnable
from langserve import add_routes

from app.api.access import API_PREFIX, INSIGHTS_CHAT_PATH, INTERACTIONS_PATH, LEAD_SCORING_PATH
from app.api.stream_response import ChainRoute
from app.core.auth import Principal
from app.core.errors import Unauthenticated
from app.core.managed_chain import ManagedChain
from app.core.policies import InsightsPolicy, InteractionPolicy, ScoringDelivery
from app.core.services import Services
from chains.context import RunContext, RunIdentity, with_run_context
from chains.insights import build_insights_chain
from chains.providers.router import ProviderRouter
from chains.interactions import build_interaction_chain
from chains.scoring.chain import build_lead_scoring_chain

__all__ = ["API_PREFIX", "INSIGHTS_CHAT_PATH", "INTERACTIONS_PATH", "LEAD_SCORING_PATH", "add_chain_routes", "build_chains"]


class RequestDisconnect:
    """Waits for the client of one request to go: one task per request, whatever the
    number of runs (a batch) waiting on it. The body has been read already, so the next
    `receive()` only returns `http.disconnect`: when the client leaves, or when the
    response is complete. No polling."""

    def __init__(self, request: Request) -> None:
        self._request = request
        self._gone: asyncio.Future[None] | None = None

    async def wait_disconnected(self) -> None:
        if self._gone is None:
            self._gone = asyncio.ensure_future(self._watch())
        await asyncio.shield(self._gone)

    async def _watch(self) -> None:
        while (await self._request.receive())["type"] != "http.disconnect":
            pass


def inject_identity(config: dict[str, Any], request: Request) -> dict[str, Any]:
    """The one place a request's `RunContext` is made: from the verified token only."""
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        raise Unauthenticated("request reached a chain without a verified principal")
    context = RunContext(
        RunIdentity(tenant_id=principal.tenant_id, user_id=principal.user_id),
        arrived_at=asyncio.get_running_loop().time(),
        client=RequestDisconnect(request),
    )
    return dict(with_run_context(config, context))  # type: ignore[arg-type]


def build_chains(services: Services) -> dict[str, Runnable[Any, Any]]:
    """Each chain wrapped for scheduling, cancellation, degradation and delivery."""
    processor = services.processor

    def insights(router: ProviderRouter) -> Runnable[Any, Any]:
        return build_insights_chain(router, services.knowledge, services.memory, services.cpu)

    def analysis(router: ProviderRouter) -> Runnable[Any, Any]:
        return build_interaction_chain(router, services.cpu, services.interactions, services.knowledge)

    interactions = InteractionPolicy(processor, analysis(services.local_router), services.cpu, services.interactions)
    chat = InsightsPolicy(insights(services.local_router))
    return {
        INTERACTIONS_PATH: ManagedChain(
            analysis(services.router), chain_name="interactions", processor=processor,
            delivery=interactions, fallback=interactions, tracer=services.tracer,
        ),
        LEAD_SCORING_PATH: ManagedChain(
            build_lead_scoring_chain(services.scoring), chain_name="scoring", processor=processor,
            delivery=ScoringDelivery(processor, services.scores), tracer=services.tracer,
        ),
        INSIGHTS_CHAT_PATH: ManagedChain(
            insights(services.router), chain_name="insights", processor=processor,
            delivery=chat, fallback=chat, tracer=services.tracer,
        ),
    }


def add_chain_routes(app: FastAPI, chains: dict[str, Runnable[Any, Any]]) -> None:
    """Authentication, roles and rate limits come from the app-wide `guard_request`; the
    streams run in the request's task (`app.api.stream_response`)."""
    route_class, app.router.route_class = app.router.route_class, ChainRoute
    try:
        for path, chain in chains.items():
            # Off: `ManagedChain` drops the event aggregator LangServe adds, whose events
            # are returned only with this on.
            add_routes(app, chain, path=path, per_req_config_modifier=inject_identity, include_callback_events=False)
    finally:
        app.router.route_class = route_class
