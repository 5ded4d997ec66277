"""The one place security events are recorded: refused tokens, forbidden roles, identity
overrides, cross-tenant attempts.

Why rate-limited: a flood of bad tokens must not fill the disk or the audit writer's
queue. Each event is counted in `ai_security_events_total{kind}`; recording is limited
per kind and client address, and per kind overall (a botnet has many addresses), with
the `limits` library's moving windows, in this process's memory (the budget bounds
what *this* replica writes; sharing it through Redis would put a network round trip on
every refusal). An event over budget is not written but counted in
`ai_security_events_suppressed_total{kind}`.

Why it never raises and never waits: the request it is about must be answered as if
nothing was recorded. Events go to the audit writer's queue (`wait=False`), which
commits them in groups and chains them (`app.store.audit_chain`).

Events without a verified tenant (a bad token) go to the tenant-less bucket
`TENANTLESS`, which only operators read.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.requests import HTTPConnection

from app.core.auth import Principal
from app.core.errors import Unauthenticated
from app.core.metrics import SECURITY_EVENTS, SECURITY_EVENTS_SUPPRESSED
from app.store.audit import AuditLog
from app.store.audit_chain import TENANTLESS

log = logging.getLogger("crm.security")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_TEXT = 200

# A refused token's reason (Unauthenticated.reason) that deserves its own kind.
TOKEN_KINDS = {"wrong_audience": "token_wrong_audience", "wrong_issuer": "token_wrong_issuer"}


def _clean(value: Any, depth: int = 0) -> Any:
    """Attacker-chosen text goes into the record: short, printable, JSON-safe."""
    if isinstance(value, str):
        return _CONTROL.sub("?", value.encode("utf-8", "replace").decode("utf-8"))[:MAX_TEXT]
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    if depth >= 3:
        return _clean(repr(value))
    if isinstance(value, Mapping):
        return {_clean(str(k)): _clean(v, depth + 1) for k, v in list(value.items())[:20]}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_clean(v, depth + 1) for v in list(value)[:20]]
    return _clean(repr(value))


def route_of(conn: HTTPConnection) -> str:
    """The route template (no ids or tokens from the URL), else the path."""
    route = conn.scope.get("route")
    return str(getattr(route, "path", None) or conn.url.path)[:256]


def client_of(conn: HTTPConnection) -> str | None:
    return conn.client.host[:64] if conn.client is not None else None


class SecurityLog:
    def __init__(self, audit: AuditLog, *, per_client: str, per_kind: str) -> None:
        self._audit = audit
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._per_client = parse(per_client)
        self._per_kind = parse(per_kind)

    def _allowed(self, kind: str, client: str | None) -> bool:
        return self._limiter.hit(self._per_client, "client", kind, client or "-") and self._limiter.hit(
            self._per_kind, "kind", kind
        )

    def record(
        self,
        kind: str,
        *,
        tenant_id: str | None,
        user_id: str | None,
        route: str | None,
        client: str | None,
        detail: Mapping[str, Any],
    ) -> bool:
        """Records the event unless its budget is spent; returns whether it was written."""
        try:
            SECURITY_EVENTS.labels(kind).inc()
            if not self._allowed(kind, client):
                SECURITY_EVENTS_SUPPRESSED.labels(kind).inc()
                return False
            tenant = tenant_id or TENANTLESS
            clean = _clean(dict(detail))
            log.warning("security event %s tenant=%s user=%s route=%s client=%s %s",
                        kind, tenant, user_id, route, client, clean, extra={"tenant_id": tenant})
            self._audit.enqueue_security_event(
                tenant_id=tenant, user_id=(user_id or TENANTLESS)[:256], run_id=None, kind=kind, detail=clean,
                route=route, client_address=client,
            )
            return True
        except Exception:  # noqa: BLE001 - recording must never fail the request it is about
            log.exception("could not record security event %s", kind)
            return False

    def record_for(
        self, conn: HTTPConnection, kind: str, principal: Principal | None, detail: Mapping[str, Any]
    ) -> bool:
        """An event about this request: tenant and user from the verified principal, if any."""
        return self.record(
            kind,
            tenant_id=principal.tenant_id if principal is not None else None,
            user_id=principal.user_id if principal is not None else None,
            route=route_of(conn), client=client_of(conn), detail=detail,
        )

    def token_refused(self, conn: HTTPConnection, refused: Unauthenticated) -> bool:
        """Every 401: tenant-less (nothing about a refused token can be trusted)."""
        kind = TOKEN_KINDS.get(refused.reason, "token_rejected")
        return self.record_for(conn, kind, None, {"reason": refused.reason, "message": refused.detail})


def security_log_of(conn: HTTPConnection) -> SecurityLog:
    log_: SecurityLog = conn.app.state.services.security_log
    return log_
