"""A chain as the service runs it: scheduled, cancellable, degradable, published.

LangServe calls `ainvoke`, `abatch`, `astream`, `astream_log` and `astream_events` on
the runnable it serves; the last two (and the default `abatch`) are built on
`astream`/`ainvoke`, so wrapping those two puts every endpoint through the same path:

1. Admission: runs of scheduled chains wait for a slot of the primary provider, high
   priority first, until the real-time deadline. No slot in time (or a full queue)
   means a degraded answer from the chain's `Fallback`, never a failure.
2. Cancellation: `invoke` and `batch` watch their HTTP client and cancel the run when
   it goes (LangServe alone keeps running them, langserve#397); streams are
   cancelled by sse-starlette. Either way the slot is released in `finally`.
3. Delivery: the finished output goes to the chain's `Delivery` (publish, cache), never failing
   the run if delivery does.

With tracing on (README, "Tracing") each run is a `run` span under the request's span,
with `queue_wait`, the router's `provider_call`s and `publish` under it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any, Protocol

from langchain_core.runnables import Runnable, RunnableConfig, ensure_config
from langchain_core.runnables.utils import ConfigurableFieldSpec
from langserve.callbacks import AsyncEventAggregatorCallback
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Tracer
from pydantic import BaseModel

from app.core.errors import ClientDisconnected
from app.core.metrics import CANCELLED, DEGRADED, RUN_LATENCY, TIME_TO_FIRST_RESULT, TIME_TO_FIRST_TOKEN
from app.core.processor import RealtimeProcessor, priority_of
from app.core.run_recorder import RunRecorder
from app.core.scheduler import SlotUnavailable
from chains import spans
from chains.context import RunIdentity, run_context, with_run_context

log = logging.getLogger(__name__)

DEGRADED_ANSWER_MARGIN_S = 0.25


class Delivery(Protocol):
    """What happens to a finished run's output (publish, cache)."""

    async def on_complete(
        self, identity: RunIdentity, payload: dict[str, Any], output: Any, degraded: bool
    ) -> None: ...


class Fallback(Protocol):
    """The answer a queued chain gives when no slot comes in time."""

    def degraded(
        self, payload: dict[str, Any], config: RunnableConfig, identity: RunIdentity, cause: str
    ) -> AsyncIterator[Any]: ...


class ManagedChain(Runnable[Any, Any]):
    """A chain as the service runs it. With a `fallback` it waits for a provider slot
    and answers degraded when none comes in time; without one it runs at once."""

    def __init__(
        self,
        chain: Runnable[Any, Any],
        *,
        chain_name: str,
        processor: RealtimeProcessor,
        delivery: Delivery,
        fallback: Fallback | None = None,
        tracer: Tracer = spans.NO_TRACER,
    ) -> None:
        self.chain = chain
        self.chain_name = chain_name  # the audit trail's `chain` and the metrics' label
        self.processor = processor
        self.delivery = delivery
        self.fallback = fallback
        self.tracer = tracer

    def get_name(self, suffix: str | None = None, *, name: str | None = None) -> str:
        return self.chain.get_name(suffix, name=name)

    @property
    def InputType(self) -> Any:  # noqa: N802 - LangChain's name
        return self.chain.InputType

    @property
    def OutputType(self) -> Any:  # noqa: N802
        return self.chain.OutputType

    def get_input_schema(self, config: RunnableConfig | None = None) -> type[BaseModel]:
        return self.chain.get_input_schema(config)  # type: ignore[return-value]  # pydantic v1 is never used

    def get_output_schema(self, config: RunnableConfig | None = None) -> type[BaseModel]:
        return self.chain.get_output_schema(config)  # type: ignore[return-value]

    @property
    def config_specs(self) -> list[ConfigurableFieldSpec]:
        return self.chain.config_specs

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        raise NotImplementedError("the service runs chains asynchronously; use ainvoke")

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        client = run_context(config).client
        run = asyncio.ensure_future(self._collect(input, config, **kwargs))
        if client is None:
            return await run
        watcher = asyncio.ensure_future(client.wait_disconnected())
        try:
            await asyncio.wait({run, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            run.cancel()
            raise
        finally:
            watcher.cancel()
        if run.done():
            return run.result()
        run.cancel()
        try:
            await run
        except asyncio.CancelledError:
            pass
        CANCELLED.labels(self.chain_name).inc()
        raise ClientDisconnected("client disconnected; run cancelled")

    async def _collect(self, input: Any, config: RunnableConfig | None, **kwargs: Any) -> Any:
        final: Any = None
        async for chunk in self.astream(input, config, **kwargs):
            final = chunk if final is None else final + chunk
        return final

    async def _admit(
        self, slots: AsyncExitStack, payload: dict[str, Any], recorder: RunRecorder, trace_parent: Context | None
    ) -> str | None:
        """Waits for a slot of the primary provider (held until `slots` closes), or says
        why none came in time: the caller then answers from its `Fallback`."""
        arrived_at = recorder.context.arrived_at or asyncio.get_running_loop().time()
        priority = priority_of(payload)
        with self.tracer.start_span(
            "queue_wait", context=trace_parent, record_exception=False, set_status_on_exception=False,
            attributes={spans.CHAIN: self.chain_name, spans.TENANT: recorder.identity.tenant_id,
                        spans.QUEUE_PRIORITY: priority},
        ) as span:
            outcome = "cancelled"
            try:
                await slots.enter_async_context(
                    self.processor.scheduler.slot(
                        tenant_id=recorder.identity.tenant_id,
                        priority=priority,
                        # Leave the degraded answer time to arrive inside the deadline too.
                        deadline=arrived_at + self.processor.deadline_s - DEGRADED_ANSWER_MARGIN_S,
                    )
                )
                outcome = "granted"
            except SlotUnavailable as unavailable:
                outcome = unavailable.reason
                return unavailable.reason
            finally:
                span.set_attribute(spans.QUEUE_OUTCOME, outcome)
        return None

    def _start_run_span(self, recorder: RunRecorder) -> tuple[trace.Span, Context | None, RunnableConfig]:
        """The run's span, the context making it a parent, and the run's config carrying
        that context to the provider router. Off, the config is the recorder's own."""
        span = self.tracer.start_span(
            "run", record_exception=False, set_status_on_exception=False,
            attributes={spans.CHAIN: self.chain_name, spans.TENANT: recorder.identity.tenant_id},
        )
        if not span.is_recording():
            return span, None, recorder.config
        parent = trace.set_span_in_context(span)
        return span, parent, with_run_context(recorder.config, replace(recorder.context, trace_parent=parent))

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        recorder = RunRecorder(self.processor.audit, _without_unread_events(ensure_config(config)), self.chain_name)
        identity = recorder.identity
        # No unaccounted AI decision: the run starts while its audit record is committed,
        # but nothing it produces leaves before the commit, and a record that cannot be
        # written fails the run (503 `audit_unavailable`). Waiting for the commit first put
        # a database round trip (a batch's, under load) in front of every first event.
        audit_started = recorder.start_run()
        audit_started.add_done_callback(_retrieve)
        run_span, trace_parent, config = self._start_run_span(recorder)
        started = time.perf_counter()
        cause: str | None = None
        final: Any = None
        outcome = "error"
        error_code: str | None = None
        try:
            # Every exit, waiting in the queue included, goes through `finally`: a client that
            # leaves while queued still gets its audit record and latency sample.
            try:
                async with AsyncExitStack() as slots:
                    if self.fallback is not None:
                        cause = await self._admit(slots, input, recorder, trace_parent)
                    if cause is None or self.fallback is None:
                        source = self.chain.astream(input, config, **kwargs)
                    else:
                        source = self.fallback.degraded(input, config, identity, cause)
                    async for chunk in source:
                        if final is None:
                            # Shielded: a client leaving now does not cancel the commit, so
                            # the run is finished as cancelled, not left `running`.
                            await asyncio.shield(audit_started)
                            TIME_TO_FIRST_RESULT.labels(self.chain_name).observe(time.perf_counter() - started)
                            final = chunk
                        else:
                            final = final + chunk
                        yield chunk
                await asyncio.shield(audit_started)  # a run without output is on the trail too
                degraded = cause is not None or bool(isinstance(final, dict) and final.get("degraded"))
                outcome = "degraded" if degraded else "ok"
            except (asyncio.CancelledError, GeneratorExit):
                outcome = "cancelled"
                raise
            except Exception as error:
                error_code = str(getattr(error, "code", type(error).__name__))
                spans.failed(run_span, error)
                raise
            finally:
                RUN_LATENCY.labels(self.chain_name, outcome).observe(time.perf_counter() - started)
                first_token_at = recorder.record.first_model_token_at
                if first_token_at is not None:
                    TIME_TO_FIRST_TOKEN.labels(self.chain_name, recorder.record.provider or "unknown").observe(
                        first_token_at - started
                    )
                if outcome in ("cancelled", "error") and not _failed(audit_started):
                    # Queued, not awaited: a cancelled task cannot wait for the commit.
                    await recorder.finished(final, status=outcome, error_code=error_code, wait=False)
            if cause is not None:
                DEGRADED.labels(self.chain_name, cause).inc()
            with self.tracer.start_span(
                "publish", context=trace_parent, record_exception=False, set_status_on_exception=False,
                attributes={spans.CHAIN: self.chain_name, spans.TENANT: identity.tenant_id},
            ) as span:
                try:
                    await self.delivery.on_complete(identity, input, final, degraded)
                except Exception as error:  # noqa: BLE001 - the client got its answer; delivery is best effort
                    spans.failed(span, error)
                    log.exception("delivering the result of %s failed", self.chain_name)
            await recorder.finished(final, status=outcome)
        finally:
            run_span.set_attribute(spans.OUTCOME, outcome)
            run_span.end()


def _without_unread_events(config: RunnableConfig) -> RunnableConfig:
    """The config without the event aggregator LangServe adds to every `invoke`, `batch`
    and `stream` run: it returns the events it gathers only with `include_callback_events`,
    which `add_chain_routes` sets off. Kept, it is a listener that makes every step of a
    run report its callbacks (and `FieldStreamingChain` take LangChain's slower path)
    for nobody."""
    callbacks = config.get("callbacks")
    if not isinstance(callbacks, list) or not any(isinstance(h, AsyncEventAggregatorCallback) for h in callbacks):
        return config
    return {**config, "callbacks": [h for h in callbacks if not isinstance(h, AsyncEventAggregatorCallback)]}


def _retrieve(task: asyncio.Future[None]) -> None:
    """The run reports a failed audit write itself; a run cancelled before it looked must
    not leave "exception was never retrieved" behind."""
    if not task.cancelled():
        task.exception()


def _failed(task: asyncio.Future[None]) -> bool:
    """The run's start could not be recorded: there is no record to finish."""
    return task.done() and (task.cancelled() or task.exception() is not None)
