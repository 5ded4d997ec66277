"""Who may call which route: one table, enforced for every route, deny by default.

`guard_request` is an app-wide dependency, so it runs for our routes, LangServe's
endpoints (playground and schemas included) and WebSocket routes alike (the plain
Starlette feeds of `app.api.streaming`, which FastAPI attaches no dependency to, call it
themselves). A route whose path has no entry in `ROUTE_POLICIES` answers 403 at run
time, and `tests/test_access_policy.py` fails on it before it ships: a new route cannot
be forgotten open (the LangGraph Server pitfall, where unmatched requests are accepted).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import WebSocketException
from fastapi.exceptions import RequestValidationError
from starlette.requests import HTTPConnection, Request

from app.api.identity_overrides import identity_overrides
from app.api.request_body import BODY_METHODS, PARSED_BODY
from app.core.auth import Principal, authenticate
from app.core.errors import Forbidden, Unprocessable
from app.core.security_log import security_log_of
from chains import spans

ADMIN = frozenset({"admin"})
ANALYSTS = frozenset({"admin", "manager", "rep"})
MANAGERS = frozenset({"admin", "manager"})
EVERYONE = frozenset({"admin", "manager", "rep", "viewer"})
# The service's operator: not a tenant role (it opens no tenant's chains or data): it
# acts on tenants as a whole (erasure) and reads every tenant's security events, and only
# with a token of OPERATOR_TENANT.
OPERATORS = frozenset({"operator"})

API_PREFIX = "/api/v1/ai/"  # a chain's name is its path under it (background runs name chains so)
INTERACTIONS_PATH = API_PREFIX + "realtime/interactions"
LEAD_SCORING_PATH = API_PREFIX + "scoring/leads"
INSIGHTS_CHAT_PATH = API_PREFIX + "insights/chat"
# LangServe reads the config of a `/c/{config_hash}/` path by decompressing it (LZString)
# on the event loop, and so does `identity_overrides`. The output grows with the square
# of the input: a 60 KB segment took 1 GB and the loop for 3 s (a security review). The
# playground's own hashes are a few hundred characters.
MAX_CONFIG_HASH_CHARS = 4_096


@dataclass(frozen=True, slots=True)
class Policy:
    """`roles=None` means public. WebSocket handlers authenticate themselves (a first
    message may carry the token) and check `roles` through `policy_for`."""

    roles: frozenset[str] | None
    rate_limited: bool = False

    @property
    def public(self) -> bool:
        return self.roles is None


PUBLIC = Policy(None)

# Exact route paths (FastAPI templates). Chain prefixes cover every LangServe endpoint.
ROUTE_POLICIES: dict[str, Policy] = {
    "/health": PUBLIC,
    "/ready": PUBLIC,
    "/metrics": PUBLIC,  # the route itself enforces METRICS_TOKEN when set
    "/api/v1/ai/insights/documents": Policy(ANALYSTS, rate_limited=True),
    "/api/v1/ai/insights/documents/{document_id}": Policy(ANALYSTS, rate_limited=True),
    # Lead scoring beside its chain (app.api.routes.scoring): reps record outcomes and
    # read scores and models; choosing between models is a manager's call.
    "/api/v1/ai/scoring/outcomes": Policy(ANALYSTS, rate_limited=True),
    "/api/v1/ai/scoring/leads/{lead_id:lead_id}": Policy(ANALYSTS),
    "/api/v1/ai/scoring/models": Policy(ANALYSTS),
    "/api/v1/ai/scoring/models/test": Policy(MANAGERS, rate_limited=True),
    "/api/v1/ai/usage": Policy(ADMIN),
    "/api/v1/ai/usage/runs": Policy(ADMIN),
    "/api/v1/ai/security/events": Policy(ADMIN),
    "/api/v1/ai/privacy/customers/{customer_id}/export": Policy(ADMIN, rate_limited=True),
    "/api/v1/ai/privacy/customers/{customer_id}": Policy(ADMIN, rate_limited=True),
    "/api/v1/ai/privacy/tenants/{tenant_id}": Policy(OPERATORS),
    "/api/v1/ai/security/events/all": Policy(OPERATORS),
    # Background runs: the chain's own roles are checked by the route (app.api.routes.workflows).
    "/api/v1/ai/workflows": Policy(EVERYONE, rate_limited=True),
    "/api/v1/ai/workflows/{workflow_id}": Policy(EVERYONE, rate_limited=True),
    "/api/v1/ai/stream/workflows/{workflow_id}": Policy(EVERYONE),
    "/ws/ai/workflows/{workflow_id}": Policy(EVERYONE),
    "/api/v1/ai/stream/insights/{customer_id}": Policy(EVERYONE),
    "/ws/ai/insights/{customer_id}": Policy(EVERYONE),
    "/ws/ai/scoring": Policy(EVERYONE),
    # Operator alerts (provider health) and the breakers' state: admins of any tenant.
    "/ws/ai/admin": Policy(ADMIN),
    "/api/v1/ai/stream/admin": Policy(ADMIN),
    "/api/v1/ai/providers/health": Policy(ADMIN),
    "/console": Policy(EVERYONE),
}
CHAIN_POLICIES: dict[str, frozenset[str]] = {
    INTERACTIONS_PATH: ANALYSTS,
    LEAD_SCORING_PATH: ANALYSTS,
    INSIGHTS_CHAT_PATH: EVERYONE,  # reading what the tenant knows about a customer
}


def policy_for(path: str, method: str) -> Policy | None:
    if path in ROUTE_POLICIES:
        return ROUTE_POLICIES[path]
    for prefix, roles in CHAIN_POLICIES.items():
        if path.startswith(prefix + "/"):
            # Running a chain spends budget; reading its schemas or playground does not.
            return Policy(roles, rate_limited=method == "POST")
    return None


async def _chain_body(request: Request) -> object:
    """A chain request's body (already checked by `RequestBodyMiddleware`), with what
    LangServe itself would crash on refused first: a bad body should cost nothing."""
    body = getattr(request.state, PARSED_BODY, None)
    if body is None:
        raise RequestValidationError([{"loc": ["body"], "msg": "body must be UTF-8 JSON", "type": "json_invalid"}])
    # LangServe crashes (TypeError, a 500) on an explicit null config or null batch inputs.
    if isinstance(body, dict) and "config" in body and body["config"] is None:
        raise RequestValidationError(
            [{"loc": ["body", "config"], "msg": "config must be an object when given", "type": "dict_type"}]
        )
    if request.url.path.endswith("/batch") and not (isinstance(body, dict) and isinstance(body.get("inputs"), list)):
        raise RequestValidationError([{"loc": ["body", "inputs"], "msg": "inputs must be a list", "type": "list_type"}])
    return body


def _is_chain_run(path: str) -> bool:
    return any(path.startswith(prefix + "/") for prefix in CHAIN_POLICIES)


def _cost(path: str, body: object) -> int:
    """A batch costs one unit per input."""
    inputs = body.get("inputs") if isinstance(body, dict) and path.endswith("/batch") else None
    return max(1, len(inputs)) if isinstance(inputs, list) else 1


def watch_chain_request(conn: Request, path: str, body: object, principal: Principal) -> None:
    """Security events of a chain request that goes ahead (through LangServe, or as a
    background run): identity named in config, metadata or input (ignored, but
    recorded), and a chat session id that may be another tenant's (checked in the
    background: `app.core.cross_tenant`). Never raises: watching must never fail the
    request it watches."""
    try:
        _watch(conn, path, body, principal)
    except Exception:  # noqa: BLE001
        logging.getLogger(__name__).exception("security checks of a chain request failed")


def _watch(conn: Request, path: str, body: object, principal: Principal) -> None:
    if overrides := identity_overrides(body, conn.path_params.get("config_hash"), principal):
        security_log_of(conn).record_for(conn, "identity_override", principal, {"overrides": overrides})
    if path.startswith(INSIGHTS_CHAT_PATH + "/") and isinstance(body, dict):
        batch = body.get("inputs")
        inputs: list[object] = batch if isinstance(batch, list) else [body.get("input")]
        sessions: set[str] = {
            i["session_id"] for i in inputs if isinstance(i, dict) and isinstance(i.get("session_id"), str)
        }
        for session_id in sorted(sessions)[:10]:
            conn.app.state.services.cross_tenant.notice_missing(conn, principal, "chat_session", session_id)


async def guard_request(conn: HTTPConnection) -> None:
    route = conn.scope.get("route")
    path = getattr(route, "path", conn.url.path)
    is_websocket = conn.scope["type"] == "websocket"
    policy = policy_for(path, "WEBSOCKET" if is_websocket else conn.scope["method"])
    if policy is None:
        security_log_of(conn).record_for(conn, "forbidden_role", None, {"reason": "no access policy for this route"})
        if is_websocket:
            raise WebSocketException(code=4403, reason="no access policy for this route")
        raise Forbidden("no access policy for this route")
    if policy.public or is_websocket:
        return
    services = conn.app.state.services
    with services.tracer.start_span("auth", record_exception=False, set_status_on_exception=False) as span:
        try:
            principal = await authenticate(conn)  # a 401 is recorded where it is answered (app.api.errors)
        except Exception as error:
            spans.failed(span, error)
            span.set_attribute("ai.auth.reason", str(getattr(error, "reason", "error")))
            raise
        span.set_attribute(spans.TENANT, principal.tenant_id)
    assert policy.roles is not None
    if not principal.has_any_role(policy.roles):
        security_log_of(conn).record_for(conn, "forbidden_role", principal, {
            "required": sorted(policy.roles), "roles": sorted(principal.roles), "method": conn.scope.get("method")})
        raise Forbidden(f"requires one of the roles {sorted(policy.roles)}")
    if policy.roles == OPERATORS and principal.tenant_id != services.settings.operator_tenant:
        # The role alone is a string any token of the issuer could carry: operators are
        # also the members of the one operator tenant (OPERATOR_TENANT).
        security_log_of(conn).record_for(conn, "forbidden_role", principal, {
            "required": "operator tenant", "roles": sorted(principal.roles), "method": conn.scope.get("method")})
        raise Forbidden("operator routes need a token of the operator tenant")
    if len(conn.path_params.get("config_hash") or "") > MAX_CONFIG_HASH_CHARS:
        raise Unprocessable(f"config_hash is at most {MAX_CONFIG_HASH_CHARS} characters", loc=("path", "config_hash"))
    has_body = isinstance(conn, Request) and conn.method in BODY_METHODS
    body = await _chain_body(conn) if has_body and _is_chain_run(path) else None
    if policy.rate_limited:
        await services.rate_limiter.check(principal, _cost(conn.url.path, body))
    if _is_chain_run(path):  # after the rate limit: a refused request starts no background check
        watch_chain_request(conn, path, body, principal)
