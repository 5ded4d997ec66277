"""Notices a caller reaching for another tenant's resource: a document or lead id, or a
chat session id, that its own tenant does not have and another one does.

Why the event goes to the tenant-less bucket, which only operators read, and not to the
caller's tenant: it is written only when the id exists in another tenant, so a tenant
admin reading it learned which of the ids their users tried exist elsewhere, and a rep
could enumerate another tenant's lead ids (a security review). The event names the
caller's tenant in its detail.

Why in the background: the answer to the caller is already decided (404, or a chat
with no history); whether the id belongs to someone else only matters to the security
log, so the lookup (`app.store.ownership`) runs after the caller has its answer and
never delays it. At most `max_in_flight` lookups run at once; beyond that they are
skipped (and counted), so probing ids cannot load the database.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import HTTPConnection

from app.core.auth import Principal
from app.core.metrics import SECURITY_CHECKS_SKIPPED
from app.core.security_log import SecurityLog, client_of, route_of
from app.store.ownership import Resource, ResourceOwnership

log = logging.getLogger(__name__)
DEFAULT_SESSION = "default"  # every tenant's chats share it: it names no one's session


class CrossTenantWatch:
    def __init__(self, ownership: ResourceOwnership, security_log: SecurityLog, *, max_in_flight: int = 32) -> None:
        self._ownership = ownership
        self._log = security_log
        self._max_in_flight = max_in_flight
        self._in_flight: set[asyncio.Task[None]] = set()

    def notice_missing(self, conn: HTTPConnection, principal: Principal, resource: Resource, resource_id: str) -> None:
        """The caller asked for `resource_id` and its tenant has none: check, later, whether another has."""
        if resource == "chat_session" and resource_id == DEFAULT_SESSION:
            return
        if len(self._in_flight) >= self._max_in_flight:
            SECURITY_CHECKS_SKIPPED.labels(resource).inc()
            return
        task = asyncio.create_task(self._check(principal, resource, resource_id, route_of(conn), client_of(conn)))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _check(self, principal: Principal, resource: Resource, resource_id: str,
                     route: str, client: str | None) -> None:
        try:
            if not await self._ownership.only_elsewhere(resource, principal.tenant_id, resource_id):
                return
        except Exception as error:  # noqa: BLE001 - a missed check must not surface anywhere
            log.warning("cross-tenant check of %s %r failed: %r", resource, resource_id, error)
            return
        kind = "foreign_session" if resource == "chat_session" else "cross_tenant_resource"
        self._log.record(kind, tenant_id=None, user_id=principal.user_id, route=route, client=client,
                         detail={"tenant_id": principal.tenant_id, "resource": resource, "id": resource_id})

    async def drain(self) -> None:
        """Waits for the checks under way (shutdown)."""
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
