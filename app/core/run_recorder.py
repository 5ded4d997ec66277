"""Accounting for one chain run: which model served it, its tokens, cost and outcome.

The model and token counts come from LangChain's own callbacks (`on_chat_model_start`
carries the provider and model name, `on_llm_end` the usage the provider reported),
so they are what actually ran, failover included.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackManager
from langchain_core.outputs import LLMResult
from langchain_core.runnables import RunnableConfig

from app.core.metrics import SECURITY_EVENTS, TOKENS
from app.core.pricing import estimate_cost_usd
from app.store.audit import AuditLog
from chains.identity import RunIdentity
from chains.safety import SECURITY_SINK_KEY


class UsageCollector(AsyncCallbackHandler):
    """Sums token usage of every chat-model call in the run; remembers the last model."""

    def __init__(self) -> None:
        self.provider: str | None = None
        self.model: str | None = None
        self.tokens_in = 0
        self.tokens_out = 0

    async def on_chat_model_start(self, serialized: dict[str, Any], messages: Any, **kwargs: Any) -> None:
        metadata = kwargs.get("metadata") or {}
        self.provider = metadata.get("ls_provider", self.provider)
        self.model = metadata.get("ls_model_name", self.model)

    async def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        for generations in response.generations:
            for generation in generations:
                usage = getattr(getattr(generation, "message", None), "usage_metadata", None)
                if usage:
                    self.tokens_in += int(usage.get("input_tokens", 0))
                    self.tokens_out += int(usage.get("output_tokens", 0))


def with_handler(config: RunnableConfig, handler: AsyncCallbackHandler) -> RunnableConfig:
    callbacks = config.get("callbacks")
    if callbacks is None:
        callbacks = [handler]
    elif isinstance(callbacks, list):
        callbacks = [*callbacks, handler]
    elif isinstance(callbacks, BaseCallbackManager):
        callbacks = callbacks.copy()
        callbacks.add_handler(handler, inherit=True)
    return {**config, "callbacks": callbacks}


class RunRecorder:
    def __init__(self, audit: AuditLog, identity: RunIdentity, chain: str, config: RunnableConfig) -> None:
        self.audit = audit
        self.identity = identity
        self.chain = chain
        self.run_id = str(config.get("run_id") or uuid.uuid4())
        self.endpoint = (config.get("metadata") or {}).get("__langserve_endpoint")
        self.usage = UsageCollector()
        self.security_events: list[dict[str, Any]] = []
        self.started = time.perf_counter()
        configurable = {**(config.get("configurable") or {}), SECURITY_SINK_KEY: self.security_events}
        self.config = with_handler({**config, "configurable": configurable}, self.usage)

    async def started_run(self) -> None:
        await self.audit.run_started(
            run_id=self.run_id, tenant_id=self.identity.tenant_id, user_id=self.identity.user_id,
            chain=self.chain, endpoint=self.endpoint,
        )

    def _fields(self, status: str, output: Any, error_code: str | None) -> dict[str, Any]:
        model = self.usage.model
        provider = self.usage.provider
        if model is None and isinstance(output, dict) and output.get("model_version"):
            model, provider = str(output["model_version"]), "scikit-learn"
        degraded = bool(isinstance(output, dict) and output.get("degraded"))
        return {
            "status": status, "provider": provider, "model": model,
            "tokens_in": self.usage.tokens_in, "tokens_out": self.usage.tokens_out,
            "cost_usd": estimate_cost_usd(model, self.usage.tokens_in, self.usage.tokens_out),
            "latency_ms": round((time.perf_counter() - self.started) * 1000, 3),
            "degraded": degraded,
            "degraded_reason": output.get("degraded_reason") if degraded and isinstance(output, dict) else None,
            "error_code": error_code,
        }

    async def finished(self, output: Any, *, status: str, error_code: str | None = None, wait: bool = True) -> None:
        fields = self._fields(status, output, error_code)
        for direction, count in (("in", fields["tokens_in"]), ("out", fields["tokens_out"])):
            if count:
                TOKENS.labels(self.identity.tenant_id, self.chain, fields["model"] or "unknown", direction).inc(count)
        for event in self.security_events:
            kind = str(event.get("kind", "unknown"))
            SECURITY_EVENTS.labels(kind).inc()
            await self.audit.security_event(
                wait=wait, tenant_id=self.identity.tenant_id, user_id=self.identity.user_id,
                run_id=self.run_id, kind=kind, detail=event,
            )
        await self.audit.run_finished(self.run_id, wait=wait, **fields)
