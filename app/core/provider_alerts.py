"""Turns provider breaker transitions into what administrators see.

A breaker that opens or closes (`chains.providers.health`) raises, in the background so
the call that caused it is not slowed:

- an `alert` event on the admin channel (`WS /ws/ai/admin`, `GET /api/v1/ai/stream/admin`);
  provider health is shared by all tenants, so the event is tenant-less (`tenant_id "-"`)
  and every tenant's admins receive it;
- an ops record: a `security_events` row of kind `provider_circuit_opened` or
  `provider_circuit_closed` in the tenant-less bucket (tenant id "-") operators read;
- metrics: the breaker state gauge per provider and a transition counter;
- the signed webhook (`ALERT_WEBHOOK_URL`) when configured.

Each step fails on its own: a database or Redis hiccup does not stop the other channels.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from app.core.alert_webhook import AlertWebhook
from app.core.metrics import PROVIDER_CIRCUIT_STATE, PROVIDER_CIRCUIT_TRANSITIONS
from app.realtime.bus import EventBus
from app.realtime.events import ADMIN_CHANNEL
from app.store.audit import AuditLog
from app.store.audit_chain import TENANTLESS
from chains.providers.health import STATE_VALUE, BreakerState, Transition

log = logging.getLogger(__name__)

SYSTEM_USER = "system"
KINDS = {BreakerState.OPEN: "provider_circuit_opened", BreakerState.CLOSED: "provider_circuit_closed"}


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()


def alert_data(transition: Transition) -> dict[str, Any]:
    """The `data` of the alert (and the detail of the ops record)."""
    data: dict[str, Any] = {
        "kind": KINDS[transition.state],
        "provider": transition.provider,
        "state": str(transition.state),
        "reason": transition.reason,
        "window": transition.stats.as_dict(),
        "at": _iso(transition.at),
    }
    if transition.state is BreakerState.OPEN:
        data["retry_at"] = _iso(transition.at + transition.cooldown_s)
    return data


class ProviderAlerts:
    """The breakers' observer (`chains.providers.health.HealthObserver`)."""

    def __init__(self, bus: EventBus, audit: AuditLog, webhook: AlertWebhook | None) -> None:
        self.bus = bus
        self.audit = audit
        self.webhook = webhook
        self._tasks: set[asyncio.Task[None]] = set()

    def state_seen(self, provider: str, state: BreakerState) -> None:
        PROVIDER_CIRCUIT_STATE.labels(provider).set(STATE_VALUE[state])

    def transition(self, transition: Transition) -> None:
        PROVIDER_CIRCUIT_TRANSITIONS.labels(transition.provider, str(transition.state)).inc()
        task = asyncio.create_task(self._raise(transition), name="provider-alert")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _raise(self, transition: Transition) -> None:
        data = alert_data(transition)
        message: dict[str, Any] | None = None
        try:
            event = await self.bus.publish(ADMIN_CHANNEL, type="alert", tenant_id=TENANTLESS, data=data)
            message = event.as_message()
        except Exception:  # noqa: BLE001 - the other channels still carry it
            log.exception("provider alert could not be published")
        try:
            await self.audit.security_event(
                wait=False, tenant_id=TENANTLESS, user_id=SYSTEM_USER, run_id=None, kind=data["kind"], detail=data
            )
        except Exception:  # noqa: BLE001
            log.exception("provider alert could not be recorded")
        if self.webhook is not None:
            if message is None:
                message = {"id": None, "type": "alert", "tenant_id": TENANTLESS, "data": data,
                           "created_at": _iso(transition.at)}
            self.webhook.send(message)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5.0)
        if self.webhook is not None:
            await self.webhook.close()
