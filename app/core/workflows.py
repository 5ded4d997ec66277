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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any

from langchain_core.runnables import Runnable
from langserve.api_handler import _unpack_input
from langserve.serialization import WellKnownLCSerializer
from pydantic import ValidationError

from app.core.auth import Principal
from app.core.errors import NotFound, RateLimited, Unprocessable
from app.realtime.bus import EventBus
from app.realtime.events import Event, parse_event_id, workflow_channel
from app.store.workflow_runs import CANCELLED, IdempotencyKeyReused, TooManyActiveRuns, WorkflowRun, WorkflowRuns
from chains.context import RunContext, RunIdentity, with_run_context

log = logging.getLogger(__name__)
SERIALIZER = WellKnownLCSerializer()
CANCEL_WAIT_S = 1.0
ENDING_GRACE_S, ENDING_GRACE_CHECKS = 1.0, 10
FINAL_WRITE_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
LOST = {"code": "interrupted", "message": "the run's end could not be recorded", "retryable": True}


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
        max_running_per_tenant: int,
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
        # A tenant's runs first take one of its own slots, then one of the process's: one
        # tenant's flood waits behind its own share, not in front of everyone else's runs
        # (a security review: 66 runs of one tenant held another's trivial run 43 s).
        self._per_tenant = max_running_per_tenant
        self._tenant_slots: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}
        self._max_active = max_active_per_tenant
        self._retry_after_s = retry_after_s
        self._sweep_s = sweep_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._starting: set[str] = set()  # inserted, not launched yet: not orphans
        self._finishing: set[asyncio.Task[None]] = set()
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
        run_id = str(uuid.uuid4())
        self._starting.add(run_id)
        try:
            run, created = await self.runs.create(
                run_id=run_id, tenant_id=principal.tenant_id, user_id=principal.user_id, chain=chain,
                customer_id=subject_of(payload) if isinstance(payload, dict) else None, input=payload, retry=retry,
                idempotency_key=idempotency_key, request_digest=digest, process_id=self.process_id,
                max_active=self._max_active,
            )
            if created:
                self._launch(run, announce_queued=True)
        except TooManyActiveRuns as full:
            raise RateLimited(f"{full.active} background runs are queued or running for your tenant "
                              f"(at most {self._max_active})", self._retry_after_s) from None
        except IdempotencyKeyReused as reused:
            raise Unprocessable(str(reused), loc=("header", "Idempotency-Key")) from None
        finally:
            self._starting.discard(run_id)
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
            if (task := self._tasks.get(run_id)) is not None:
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
        on. Once it ended: the events published after `after` up to the `end` (nothing
        if the watcher has the `end` already), or, when the log lost them (past its
        replay window, Redis away), the `end` rebuilt from the record, with its own id."""
        run = await self.runs.get(tenant_id, run_id)
        if run is None or not run.final:
            return None
        channel = workflow_channel(tenant_id, run_id)
        end_id = await self._end_id(run)
        for _ in range(ENDING_GRACE_CHECKS):  # the record turns final a moment before the `end` is out
            if end_id is not None:
                break
            await asyncio.sleep(ENDING_GRACE_S / ENDING_GRACE_CHECKS)
            end_id = await self._end_id((await self.runs.get(tenant_id, run_id)) or run)
        if end_id is not None and after is not None and parse_event_id(end_id) <= parse_event_id(after):
            return []
        later = await self.bus.history(channel, after or "0-0")
        if any(is_end(event) for event in later):
            return later
        if end_id is None:  # its process stopped between the record and the `end`: a new id
            ms, seq = parse_event_id(after or "0-0")
            end_id = f"{ms}-{seq + 1}"
        return [Event(id=end_id, type="end", tenant_id=tenant_id, data=end_data(run), customer_id=run.customer_id)]

    async def has_ended_before(self, tenant_id: str, run_id: str, after: str) -> bool:
        """Whether the run's `end` lies at or before `after`: that watcher has seen it all."""
        run = await self.runs.get(tenant_id, run_id)
        end_id = await self._end_id(run) if run is not None and run.final else None
        return end_id is not None and parse_event_id(end_id) <= parse_event_id(after)

    async def _end_id(self, run: WorkflowRun) -> str | None:
        """The id of the run's `end`: noted on the record once published; until then (a
        moment) read from the log."""
        if run.end_event_id is not None:
            return run.end_event_id
        ends = [e.id for e in await self.bus.history(workflow_channel(run.tenant_id, run.run_id), "0-0") if is_end(e)]
        return ends[-1] if ends else None

    # -- execution --------------------------------------------------------------

    def _launch(self, run: WorkflowRun, *, announce_queued: bool = False) -> None:
        task = asyncio.create_task(self._execute(run, announce_queued), name=f"workflow-{run.run_id}")
        self._tasks[run.run_id] = task
        task.add_done_callback(lambda done: self._tasks.pop(run.run_id, None) if self._tasks.get(run.run_id) is done
                               else None)

    @asynccontextmanager
    async def _tenant_slot(self, tenant_id: str) -> AsyncIterator[None]:
        """One of the tenant's `max_running_per_tenant` slots; a tenant with no run waiting
        or running keeps no semaphore."""
        slots, users = self._tenant_slots.setdefault(tenant_id, (asyncio.Semaphore(self._per_tenant), [0]))
        users[0] += 1
        try:
            async with slots:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._tenant_slots[tenant_id]

    async def _execute(self, run: WorkflowRun, announce_queued: bool) -> None:
        """Cancelled by a DELETE, an erasure, losing the run to another replica or a stop;
        its ending is shielded, so a cancel that lands as it finishes loses nothing."""
        chain = self.chains[run.chain]
        try:
            if announce_queued:
                await self._publish(run, "status", {"status": "queued", "attempt": run.attempt})
            async with self._tenant_slot(run.tenant_id), self._slots:
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
                    await self._publish(run, "data", {"chunk": SERIALIZER.dumpd(chunk), "attempt": run.attempt})
            output = SERIALIZER.dumpd(final)
        except asyncio.CancelledError:
            if not self._stopping:  # a stopping replica hands its runs over in `stop`
                await self._settle(self._end(run, "cancelled", error=CANCELLED))
            return
        except Exception as error:  # noqa: BLE001 - the run fails; the replica goes on
            log.warning("background run %s failed: %r", run.run_id, error)
            await self._settle(self._end(run, "failed", error=self._describe(error)))
            return
        await self._settle(self._end(run, "succeeded", output=output))

    async def _settle(self, ending: Awaitable[None]) -> None:
        """Runs a run's ending to completion even if its task is cancelled meanwhile, and
        keeps the task until then: while its task lives, the run is this replica's own
        business (the sweep adopts held runs that have no task)."""
        task = asyncio.ensure_future(ending)
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
        cancelled = False
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError
        task.result()

    async def _end(self, run: WorkflowRun, status: str, *, output: Any = None,
                   error: dict[str, Any] | None = None) -> None:
        """Makes the run final, if this replica still holds it, and announces it. The
        write is retried: a run must not stay `running` because the database blinked
        (if it never succeeds, the sweep settles the row)."""
        for pause_s in (*FINAL_WRITE_BACKOFF_S, None):
            try:
                finished = await self.runs.finish(run, self.process_id, status, output=output, error=error)
                break
            except Exception as failure:  # noqa: BLE001 - retried, then left to the sweep
                log.warning("recording the end of background run %s failed: %r", run.run_id, failure)
                if pause_s is None:
                    return
                await asyncio.sleep(pause_s)
        if finished:
            await self._announce_end((await self.runs.get_any(run.run_id)) or run)
        elif await self.runs.get_any(run.run_id) is None:
            # Erased while it ran: what it published since goes too.
            await self.bus.erase(workflow_channel(run.tenant_id, run.run_id))

    async def _announce_end(self, run: WorkflowRun) -> None:
        event = await self._publish(run, "end", end_data(run))
        await self.runs.ended_at(run.run_id, event.id)

    async def _publish(self, run: WorkflowRun, kind: str, data: dict[str, Any]) -> Event:
        return await self.bus.publish(workflow_channel(run.tenant_id, run.run_id), type=kind, tenant_id=run.tenant_id,
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
        launched = set(self._tasks)  # before the read: a run launched meanwhile is not judged on it
        held = await self.runs.held(self.process_id)
        stop = launched - held  # lost: erased, taken over after a late heartbeat, or ended
        stop |= set(await self.runs.cancel_requests(self.process_id)) if self._tasks else set()
        for run_id in stop:
            if (task := self._tasks.get(run_id)) is not None:
                task.cancel()
        for run_id in held - set(self._tasks) - self._starting:
            await self._adopt(run_id)
        for run in await self._announce(await self.runs.abandoned(self._alive(), taker=self.process_id)):
            self._launch(run)
        free = self._max_concurrency - len(self._tasks)
        for run in await self.runs.claim_released(self.process_id, free):
            self._launch(run)

    async def _adopt(self, run_id: str) -> None:
        """A run this replica holds but has no task for (its launch or its final write
        failed): a queued one is started, a running one can only end `interrupted`."""
        run = await self.runs.get_any(run_id)
        if run is None or run.final or run.process_id != self.process_id or run_id in self._tasks:
            return
        if run.status == "queued":
            self._launch(run, announce_queued=True)
        else:
            await self._end(run, "interrupted", error=LOST)

    async def _announce(self, changed: list[WorkflowRun]) -> list[WorkflowRun]:
        """Publishes what happened to runs taken from a stopped replica; returns the queued ones."""
        queued = []
        for run in changed:
            if run.final:
                await self._announce_end(run)
            else:
                await self._publish(run, "status", {"status": run.status, "attempt": run.attempt,
                                                    "reason": "the replica holding it stopped"})
                queued.append(run)
        return queued

    async def stop(self) -> None:
        """A clean stop hands this replica's runs over as a dead one's would be: queued
        ones and those that asked for `retry` go to the other replicas, others end
        `interrupted`."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with suppress(asyncio.CancelledError):
                await self._supervisor
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *self._finishing, return_exceptions=True)
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

