"""A chain as the service runs it: scheduled, cancellable, degradable, published.

LangServe calls `ainvoke`, `abatch`, `astream`, `astream_log` and `astream_events` on
the runnable it serves; the last two (and the default `abatch`) are built on
`astream`/`ainvoke`, so wrapping those two puts every endpoint through the same path:

1. Admission: runs of scheduled chains wait for a slot of the primary provider, high
   priority first, until the real-time deadline. No slot in time (or a full queue)
   means a degraded answer from the policy, never a failure.
2. Cancellation: `invoke` and `batch` watch their HTTP client and cancel the run when
   it goes (LangServe alone keeps running them, langserve#397); streams are
   cancelled by sse-starlette. Either way the slot is released in `finally`.
3. Delivery: the finished output goes to the policy (publish, cache), never failing
   the run if delivery does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from langchain_core.runnables import Runnable, RunnableConfig, RunnableSerializable, ensure_config
from langchain_core.runnables.utils import ConfigurableFieldSpec
from pydantic import BaseModel

from app.core.errors import ClientDisconnected
from app.core.metrics import CANCELLED, DEGRADED, RUN_LATENCY, TIME_TO_FIRST_CHUNK
from app.core.processor import RealtimeProcessor, priority_of
from app.core.run_context import run_context_of
from app.core.run_recorder import RunRecorder
from app.core.scheduler import SlotUnavailable
from chains.identity import RunIdentity, identity_from_config

log = logging.getLogger(__name__)

DEGRADED_ANSWER_MARGIN_S = 0.25


class ChainPolicy(Protocol):
    name: str
    scheduled: bool

    def degraded(
        self, payload: dict[str, Any], config: RunnableConfig, identity: RunIdentity, cause: str
    ) -> AsyncIterator[Any]: ...

    async def on_complete(
        self, identity: RunIdentity, payload: dict[str, Any], output: Any, degraded: bool
    ) -> None: ...


class ManagedChain(RunnableSerializable[Any, Any]):
    chain: Runnable[Any, Any]
    policy: Any  # ChainPolicy; pydantic cannot validate a Protocol
    processor: Any  # RealtimeProcessor

    model_config = {"arbitrary_types_allowed": True}

    def get_name(self, suffix: str | None = None, *, name: str | None = None) -> str:
        return self.chain.get_name(suffix, name=name)

    @property
    def InputType(self) -> Any:  # noqa: N802 - LangChain's name
        return self.chain.InputType

    @property
    def OutputType(self) -> Any:  # noqa: N802
        return self.chain.OutputType

    def get_input_schema(self, config: RunnableConfig | None = None) -> type[BaseModel]:
        return self.chain.get_input_schema(config)

    def get_output_schema(self, config: RunnableConfig | None = None) -> type[BaseModel]:
        return self.chain.get_output_schema(config)

    @property
    def config_specs(self) -> list[ConfigurableFieldSpec]:
        return self.chain.config_specs

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        raise NotImplementedError("the service runs chains asynchronously; use ainvoke")

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        context = run_context_of(config)
        run = asyncio.ensure_future(self._collect(input, config, **kwargs))
        if context is None or context.request is None:
            return await run
        watcher = asyncio.ensure_future(context.wait_disconnected())
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
        CANCELLED.labels(self.policy.name).inc()
        raise ClientDisconnected("client disconnected; run cancelled")

    async def _collect(self, input: Any, config: RunnableConfig | None, **kwargs: Any) -> Any:
        final: Any = None
        async for chunk in self.astream(input, config, **kwargs):
            final = chunk if final is None else final + chunk
        return final

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        config = ensure_config(config)
        identity = identity_from_config(config)
        processor: RealtimeProcessor = self.processor
        recorder = RunRecorder(processor.audit, identity, self.policy.name, config)
        await recorder.started_run()  # no unaccounted AI decision: refuse if it cannot be recorded
        config = recorder.config
        started = time.perf_counter()
        cause: str | None = None
        holds_slot = False
        if self.policy.scheduled:
            context = run_context_of(config)
            arrived_at = context.arrived_at if context and context.arrived_at else asyncio.get_running_loop().time()
            try:
                await processor.scheduler.acquire(
                    tenant_id=identity.tenant_id,
                    priority=priority_of(input),
                    # Leave the degraded answer time to arrive inside the deadline too.
                    deadline=arrived_at + processor.deadline_s - DEGRADED_ANSWER_MARGIN_S,
                )
                holds_slot = True
            except SlotUnavailable as unavailable:
                cause = unavailable.reason
        slot_taken_at = time.perf_counter()
        final: Any = None
        outcome = "error"
        error_code: str | None = None
        try:
            if cause is None:
                source = self.chain.astream(input, config, **kwargs)
            else:
                source = self.policy.degraded(input, config, identity, cause)
            async for chunk in source:
                if final is None:
                    TIME_TO_FIRST_CHUNK.labels(self.policy.name).observe(time.perf_counter() - started)
                    final = chunk
                else:
                    final = final + chunk
                yield chunk
            degraded = cause is not None or bool(isinstance(final, dict) and final.get("degraded"))
            outcome = "degraded" if degraded else "ok"
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"
            raise
        except Exception as error:
            error_code = str(getattr(error, "code", type(error).__name__))
            raise
        finally:
            if holds_slot:
                processor.scheduler.release(held_s=time.perf_counter() - slot_taken_at)
            RUN_LATENCY.labels(self.policy.name, outcome).observe(time.perf_counter() - started)
            if outcome in ("cancelled", "error"):
                # Queued, not awaited: a cancelled task cannot wait for the commit.
                await recorder.finished(final, status=outcome, error_code=error_code, wait=False)
        if cause is not None:
            DEGRADED.labels(self.policy.name, cause).inc()
        try:
            await self.policy.on_complete(identity, input, final, degraded)
        except Exception:  # noqa: BLE001 - the client got its answer; delivery is best effort
            log.exception("delivering the result of %s failed", self.policy.name)
        await recorder.finished(final, status=outcome)
