"""Accounting for one chain run: which model served it, its tokens, cost and outcome.

Each run gets its own `RunRecord` inside the request's `RunContext`; the provider
router writes what actually served it (failover included) and the usage the provider
reported, the guards add security events, and the recorder turns that into the audit
record and the token counters.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from langchain_core.runnables import RunnableConfig
from langsmith.utils import tracing_is_enabled

from app.core.metrics import SECURITY_EVENTS, TOKENS
from app.core.pricing import estimate_cost_usd
from app.store.audit import AuditLog
from chains.context import RunContext, run_context, with_run_context

# Endpoints whose clients receive per-token callback events.
TOKEN_EVENT_ENDPOINTS = frozenset({"stream_log", "stream_events"})


class RunRecorder:
    def __init__(self, audit: AuditLog, config: RunnableConfig, chain: str) -> None:
        self.audit = audit
        self.chain = chain
        self.run_id = str(config.get("run_id") or uuid.uuid4())
        self.endpoint = (config.get("metadata") or {}).get("__langserve_endpoint")
        self.context: RunContext = run_context(config).for_run(
            token_callbacks=self.endpoint in TOKEN_EVENT_ENDPOINTS or bool(tracing_is_enabled())
        )
        self.identity = self.context.identity
        self.record = self.context.record
        self.config = with_run_context(config, self.context)
        self.started = time.perf_counter()

    def start_run(self) -> asyncio.Future[None]:
        """Queues the run's start record; the future is its commit (see `AuditLog.begin_run`)."""
        return self.audit.begin_run(
            run_id=self.run_id, tenant_id=self.identity.tenant_id, user_id=self.identity.user_id,
            chain=self.chain, endpoint=self.endpoint,
        )

    def _fields(self, status: str, output: Any, error_code: str | None) -> dict[str, Any]:
        model = self.record.model
        provider = self.record.provider
        if model is None and isinstance(output, dict) and output.get("model_version"):
            model, provider = str(output["model_version"]), "scikit-learn"
        degraded = bool(isinstance(output, dict) and output.get("degraded"))
        return {
            "status": status, "provider": provider, "model": model,
            "tokens_in": self.record.input_tokens, "tokens_out": self.record.output_tokens,
            "cost_usd": estimate_cost_usd(model, self.record.input_tokens, self.record.output_tokens),
            "latency_ms": round((time.perf_counter() - self.started) * 1000, 3),
            "degraded": degraded,
            "degraded_reason": output.get("degraded_reason") if degraded and isinstance(output, dict) else None,
            "error_code": error_code,
        }

    async def finished(self, output: Any, *, status: str, error_code: str | None = None, wait: bool = True) -> None:
        fields = self._fields(status, output, error_code)
        for direction, count in (("in", fields["tokens_in"]), ("out", fields["tokens_out"])):
            if count:
                TOKENS.labels(
                    self.identity.tenant_id, self.chain, fields["provider"] or "unknown",
                    fields["model"] or "unknown", direction,
                ).inc(count)
        for event in self.record.security_events:
            kind = str(event.get("kind", "unknown"))
            SECURITY_EVENTS.labels(kind).inc()
            await self.audit.security_event(
                wait=wait, tenant_id=self.identity.tenant_id, user_id=self.identity.user_id,
                run_id=self.run_id, kind=kind, detail=event,
            )
        await self.audit.run_finished(self.run_id, wait=wait, **fields)
