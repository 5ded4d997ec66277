"""The contract's chains on LangServe: every endpoint behind auth, identity injected.

`per_req_config_modifier` runs for invoke, batch, stream, stream_log and stream_events
(the `/c/{hash}/` variants too) after the client's config was parsed, so writing
identity there overwrites whatever a client sent. Identity is never a declared
configurable field, so LangServe's schema drops client attempts before that anyway.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Request
from langchain_core.runnables import Runnable
from langserve import add_routes

from app.core.auth import Principal, authenticate
from app.core.errors import Unauthenticated
from app.core.services import Services
from chains.insights import build_insights_chain
from chains.interactions import build_interaction_chain
from chains.scoring.chain import build_lead_scoring_chain

INTERACTIONS_PATH = "/api/v1/ai/realtime/interactions"
LEAD_SCORING_PATH = "/api/v1/ai/scoring/leads"
INSIGHTS_CHAT_PATH = "/api/v1/ai/insights/chat"


def inject_identity(config: dict[str, Any], request: Request) -> dict[str, Any]:
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        raise Unauthenticated("request reached a chain without a verified principal")
    configurable = dict(config.get("configurable") or {})
    configurable.update(tenant_id=principal.tenant_id, user_id=principal.user_id)
    return {**config, "configurable": configurable}


def build_chains(services: Services) -> dict[str, Runnable[Any, Any]]:
    return {
        INTERACTIONS_PATH: build_interaction_chain(services.router),
        LEAD_SCORING_PATH: build_lead_scoring_chain(services.scoring),
        INSIGHTS_CHAT_PATH: build_insights_chain(services.router, services.knowledge, services.memory),
    }


def add_chain_routes(app: FastAPI, chains: dict[str, Runnable[Any, Any]]) -> None:
    for path, chain in chains.items():
        add_routes(
            app,
            chain,
            path=path,
            dependencies=[Depends(authenticate)],
            per_req_config_modifier=inject_identity,
        )
