"""Background runs (#16): a chain's run that belongs to no client.

A run is started by `POST /api/v1/ai/workflows` and executed by the replica that
accepted it, through the same `ManagedChain` as a LangServe call (scheduler,
priorities, deadlines, audit, providers and failover). Its events go to a channel of
its own on the event bus (`status`, one `data` per chunk as the chain's `/stream`
sends it, and a final `end`), so any replica can replay them by id and follow them
live; no watcher holds the run, and closing every one of them does not cancel it.

Every `WORKFLOW_SWEEP_S` each replica (1) cancels its runs that a request on any
replica asked to cancel, (2) takes over the runs of replicas that stopped beating
(`app.store.liveness`): each is re-queued once, on the replica that noticed, if it
asked for `retry`, else it ends `interrupted`; and (3) claims, while it has free
slots, the re-queued runs a replica released as it stopped cleanly.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any

from langchain_core.runnables import Runnable
from langserve.api_handler import _unpack_input
from langserve.serialization import WellKnownLCSerializer
from pydantic import ValidationError

from app.core.auth import Principal
from app.core.errors import NotFound, RateLimited, Unprocessable
from app.realtime.bus import EventBus
from app.realtime.events import Event, parse_event_id, workflow_channel
from app.store.workflow_runs import IdempotencyKeyReused, TooManyActiveRuns, WorkflowRun, WorkflowRuns
from chains.context import RunContext, RunIdentity, with_run_context

log = logging.getLogger(__name__)
SERIALIZER = WellKnownLCSerializer()
CANCEL_WAIT_S = 1.0
ENDING_GRACE_S, ENDING_GRACE_CHECKS = 1.0, 10


def is_end(event: Event) -> bool:
    return event.type == "end"


def subject_of(payload: dict[str, Any]) -> str | None:
    """Whom the run is about: a customer, or a scoring run's lead (one id in the CRM)."""
    subject = payload.get("customer_id") or payload.get("lead_id")
    return str(subject)[:128] if subject is not None else None


class WorkflowRunner:
    def __init__(
        self,
        runs: WorkflowRuns,
        chains: Mapping[str, Runnable[Any, Any]],
        bus: EventBus,
        *,
        process_id: str,
        alive: Callable[[], Any],
        describe_error: Callable[[BaseException], dict[str, Any]],
        max_concurrency: int,
        max_active_per_tenant: int,
        retry_after_s: int,
        sweep_s: float,
    ) -> None:
        self.runs = runs
        self.chains = chains  # by name: "realtime/interactions", "scoring/leads", "insights/chat"
        self.bus = bus
        self.process_id = process_id
        self._alive = alive
        self._describe = describe_error
        self._max_concurrency = max_concurrency
        self._slots = asyncio.Semaphore(max_concurrency)
        self._max_active = max_active_per_tenant
        self._retry_after_s = retry_after_s
        self._sweep_s = sweep_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    # -- requests ---------------------------------------------------------------

    async def start(
        self, principal: Principal, chain: str, raw_input: Any, *, retry: bool, idempotency_key: str | None
    ) -> tuple[WorkflowRun, bool]:
        """Returns the run and whether this request created it (False: an idempotent replay).
        The caller checked that the principal may run `chain` (`app.api.access`)."""
        payload = validated_input(self.chains[chain], raw_input)
        digest = hashlib.sha256(  # of the input as the chain reads it: defaults spelled out or not
            json.dumps({"chain": chain, "input": payload, "retry": retry}, sort_keys=True, default=str).encode()
        ).hexdigest()
        try:
            run, created = await self.runs.create(
                run_id=str(uuid.uuid4()), tenant_id=principal.tenant_id, user_id=principal.user_id, chain=chain,
                customer_id=subject_of(payload) if isinstance(payload, dict) else None, input=payload, retry=retry,
                idempotency_key=idempotency_key, request_digest=digest, process_id=self.process_id,
                max_active=self._max_active,
            )
        except TooManyActiveRuns as full:
            raise RateLimited(f"{full.active} background runs are queued or running for your tenant "
                              f"(at most {self._max_active})", self._retry_after_s) from None
        except IdempotencyKeyReused as reused:
            raise Unprocessable(str(reused), loc=("header", "Idempotency-Key")) from None
        if created:
            await self._publish(run, "status", {"status": "queued", "attempt": run.attempt})
            self._launch(run)
        return run, created

    async def get(self, principal: Principal, run_id: str) -> WorkflowRun:
        run = await self.runs.get(principal.tenant_id, run_id)
        if run is None:
            raise NotFound("no background run with this id in your tenant")
        return run

    async def cancel(self, principal: Principal, run_id: str) -> WorkflowRun:
        """Cancels the run wherever it runs; returns it once final (or after `CANCEL_WAIT_S`)."""
        run = await self.get(principal, run_id)
        if run.final:
            return run
        if await self.runs.cancel_queued(principal.tenant_id, run_id):
            cancelled = await self.get(principal, run_id)
            await self._announce_end(cancelled)
            task = self._tasks.get(run_id)
            if task is not None:
                task.cancel()
            return cancelled
        await self.runs.request_cancel(principal.tenant_id, run_id)
        task = self._tasks.get(run_id)
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(CANCEL_WAIT_S):
                    await asyncio.shield(task)
        else:  # another replica runs it: its sweep cancels it
            deadline = time.monotonic() + CANCEL_WAIT_S
            while time.monotonic() < deadline:
                await asyncio.sleep(min(0.05, self._sweep_s))
                if (await self.get(principal, run_id)).final:
                    break
        return await self.get(principal, run_id)

    async def ending(self, tenant_id: str, run_id: str, after: str | None) -> list[Event] | None:
        """For a watcher whose replay after `after` held no `end`: None while the run goes
        on. Once it ended: what was published after `after` (nothing if the watcher has
        its `end` already), or, when the log holds no `end` (the replay window passed,
        Redis was away), the `end` rebuilt from the record, with an id after `after` so
        the watcher takes it."""
        run = await self.runs.get(tenant_id, run_id)
        if run is None or not run.final:
            return None
        channel = workflow_channel(tenant_id, run_id)
        # The record turns final a moment before the `end` is published: wait for the
        # real one rather than rebuild an `end` that the real one would then repeat.
        for _ in range(ENDING_GRACE_CHECKS):
            log = await self.bus.history(channel, "0-0")
            if any(is_end(event) for event in log):
                return [event for event in log if event.after(after)]  # published since the replay
            await asyncio.sleep(ENDING_GRACE_S / ENDING_GRACE_CHECKS)
        ms, seq = parse_event_id(after or "0-0")
        return [Event(id=f"{ms}-{seq + 1}", type="end", tenant_id=tenant_id, data=end_data(run),
                      customer_id=run.customer_id)]

    async def has_ended_before(self, tenant_id: str, run_id: str, after: str) -> bool:
        """Whether the run's `end` lies at or before `after`: that watcher has seen it all."""
        log = await self.bus.history(workflow_channel(tenant_id, run_id), "0-0")
        return any(is_end(event) and not event.after(after) for event in log)

    # -- execution --------------------------------------------------------------

    def _launch(self, run: WorkflowRun) -> None:
        task = asyncio.create_task(self._execute(run), name=f"workflow-{run.run_id}")
        self._tasks[run.run_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(run.run_id, None))

    async def _execute(self, run: WorkflowRun) -> None:
        chain = self.chains[run.chain]
        try:
            async with self._slots:
                if not await self.runs.claim(run.run_id, self.process_id):
                    return  # cancelled while queued: the cancel announced it
                await self._publish(run, "status", {"status": "running", "attempt": run.attempt})
                context = RunContext(RunIdentity(tenant_id=run.tenant_id, user_id=run.user_id),
                                     arrived_at=asyncio.get_running_loop().time())
                config = with_run_context(
                    {"run_id": uuid.uuid4(), "metadata": {"workflow_id": run.run_id, "__langserve_endpoint": "workflow"}},
                    context,
                )
                final: Any = None
                async for chunk in chain.astream(run.input, config):
                    final = chunk if final is None else final + chunk
                    await self._publish(run, "data", {"chunk": SERIALIZER.dumpd(chunk)})
            await self._end(run, "succeeded", output=SERIALIZER.dumpd(final))
        except asyncio.CancelledError:
            if not self._stopping:  # a stopping replica hands its runs over in `stop`
                await asyncio.shield(self._end(run, "cancelled", error={
                    "code": "cancelled", "message": "cancelled by a request", "retryable": False}))
        except Exception as error:  # noqa: BLE001 - the run fails; the replica goes on
            log.warning("background run %s failed: %r", run.run_id, error)
            await self._end(run, "failed", error=self._describe(error))

    async def _end(self, run: WorkflowRun, status: str, *, output: Any = None,
                   error: dict[str, Any] | None = None) -> None:
        if await self.runs.finish(run, self.process_id, status, output=output, error=error):
            await self._announce_end((await self.runs.get_any(run.run_id)) or run)
        elif await self.runs.get_any(run.run_id) is None:
            # Erased while it ran: what it published since goes too.
            await self.bus.erase(workflow_channel(run.tenant_id, run.run_id))

    async def _announce_end(self, run: WorkflowRun) -> None:
        await self._publish(run, "end", end_data(run))

    async def _publish(self, run: WorkflowRun, kind: str, data: dict[str, Any]) -> None:
        await self.bus.publish(workflow_channel(run.tenant_id, run.run_id), type=kind, tenant_id=run.tenant_id,
                               data=data, customer_id=run.customer_id)

    # -- supervision ------------------------------------------------------------

    def start_supervising(self) -> None:
        self._supervisor = asyncio.create_task(self._supervise_forever(), name="workflow-supervisor")

    async def _supervise_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_s)
            try:
                await self.sweep()
            except Exception as error:  # noqa: BLE001 - retried at the next sweep
                log.warning("background run sweep failed: %r", error)

    async def sweep(self) -> None:
        if self._tasks:
            running = list(self._tasks)
            erased = set(running) - await self.runs.existing(running)  # their customer or tenant was erased
            for run_id in erased | set(await self.runs.cancel_requests(self.process_id)):
                if (task := self._tasks.get(run_id)) is not None:
                    task.cancel()
        for run in await self._announce(await self.runs.abandoned(self._alive(), taker=self.process_id)):
            self._launch(run)
        free = self._max_concurrency - len(self._tasks)
        for run in await self.runs.claim_released(self.process_id, free):
            self._launch(run)

    async def _announce(self, changed: list[WorkflowRun]) -> list[WorkflowRun]:
        """Publishes what happened to runs taken from a stopped replica; returns the re-queued ones."""
        requeued = []
        for run in changed:
            if run.final:
                await self._announce_end(run)
            else:
                await self._publish(run, "status", {"status": run.status, "attempt": run.attempt,
                                                    "reason": "the replica running it stopped: retrying"})
                requeued.append(run)
        return requeued

    async def stop(self) -> None:
        """A clean stop hands this replica's runs over as a dead one's would be: re-queued
        once for another replica if they asked for `retry`, else `interrupted`."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with suppress(asyncio.CancelledError):
                await self._supervisor
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            mine = await self.runs.abandoned(None, taker=self.process_id, process_id=self.process_id)
            for run in await self._announce(mine):
                await self.runs.release(run.run_id, self.process_id)
        except Exception as error:  # noqa: BLE001 - other replicas sweep them up once this one stops beating
            log.warning("handing over background runs failed: %r", error)


def validated_input(chain: Runnable[Any, Any], raw_input: Any) -> Any:
    """The input as LangServe would hand it to the chain: checked against the chain's
    own input schema, so a background run accepts exactly what `/invoke` accepts."""
    try:
        model = chain.get_input_schema().model_validate(raw_input)
    except ValidationError as invalid:
        first = invalid.errors()[0]
        raise Unprocessable(first["msg"], loc=("body", "input", *map(str, first["loc"]))) from None
    return _unpack_input(model)


def end_data(run: WorkflowRun) -> dict[str, Any]:
    """The `end` event: the final status with the output or the error, as `GET` shows them."""
    data: dict[str, Any] = {"status": run.status, "attempt": run.attempt}
    if run.output is not None:
        data["output"] = run.output
    if run.error is not None:
        data["error"] = run.error
    return data

