"""What a chain run knows besides its input: who asked, and what the run produced.

The web layer creates one `RunContext` per request from the verified token
(`app.api.chains.inject_identity`), and `ManagedChain` gives each run of it a fresh
`RunRecord`. It travels under one documented key, `config["configurable"][RUN_CONTEXT_KEY]`:

- LangChain hands `configurable` to every child runnable as it is, and copies only
  primitive values into trace metadata, so the object reaches every step untouched
  and never shows in a trace;
- clients cannot set it: LangServe drops configurable keys a chain does not declare,
  the per-request modifier overwrites the key anyway, and JSON cannot produce a
  `RunContext` instance, which is the only thing `run_context` accepts.

Chains read it through `run_context(config)`; a run without one fails closed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from langchain_core.runnables import RunnableConfig
from opentelemetry.context import Context

RUN_CONTEXT_KEY = "crm_run_context"


class MissingIdentity(RuntimeError):
    """A chain ran without server-made identity: refuse rather than guess a tenant."""


@dataclass(frozen=True, slots=True)
class RunIdentity:
    tenant_id: str
    user_id: str


@dataclass(slots=True)
class RunRecord:
    """What the run produced besides its output, filled in as it goes.

    The provider router writes which provider and model served (failover included) and
    the usage they reported; the guards append security events. The audit trail and
    the metrics read it when the run ends.
    """

    provider: str | None = None
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    failures: list[str] = field(default_factory=list)
    security_events: list[dict[str, Any]] = field(default_factory=list)
    first_model_token_at: float | None = None  # time.perf_counter() of the model's first token


class ClientLink(Protocol):
    """The client connection a run serves: returns once that client has gone."""

    async def wait_disconnected(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RunContext:
    identity: RunIdentity
    record: RunRecord = field(default_factory=RunRecord)
    # False when nobody listens to per-token callbacks (no stream_events, no tracer):
    # models then stream without LangChain's callback fan-out per token.
    token_callbacks: bool = True
    arrived_at: float | None = None  # loop.time() when the request reached the chain layer
    client: ClientLink | None = None
    # With tracing on: the OpenTelemetry context of this run's `run` span, the parent of
    # its provider calls (a span cannot be made current across a generator's yields).
    trace_parent: Context | None = None

    def for_run(self, *, token_callbacks: bool) -> RunContext:
        """The same request's context with a record of its own (one per run of a batch)."""
        return replace(self, record=RunRecord(), token_callbacks=token_callbacks)


def run_context(config: RunnableConfig | None) -> RunContext:
    value = ((config or {}).get("configurable") or {}).get(RUN_CONTEXT_KEY)
    if not isinstance(value, RunContext):
        raise MissingIdentity("run has no server-made identity")
    return value


def with_run_context(config: RunnableConfig | None, context: RunContext) -> RunnableConfig:
    base: RunnableConfig = config or {}
    return {**base, "configurable": {**(base.get("configurable") or {}), RUN_CONTEXT_KEY: context}}


def run_config(tenant_id: str, user_id: str) -> RunnableConfig:
    """A config carrying identity, for in-process callers (background runs, tests)."""
    return with_run_context(None, RunContext(RunIdentity(tenant_id=tenant_id, user_id=user_id)))
