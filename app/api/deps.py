"""Annotated dependency aliases: what a route needs, named for what it grants."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends
from starlette.requests import HTTPConnection

from app.core.auth import Principal, authenticate
from app.core.config import Settings
from app.core.errors import Forbidden
from app.core.services import Services


def get_services(conn: HTTPConnection) -> Services:
    services: Services = conn.app.state.services
    return services


def get_app_settings(conn: HTTPConnection) -> Settings:
    return get_services(conn).settings


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
CurrentPrincipal = Annotated[Principal, Depends(authenticate)]

WRITER_ROLES = frozenset({"admin", "manager", "rep"})


def require_roles(
    allowed: frozenset[str],
) -> Callable[[Principal], Coroutine[Any, Any, Principal]]:
    async def check(principal: CurrentPrincipal) -> Principal:
        if not principal.has_any_role(allowed):
            raise Forbidden(f"requires one of the roles {sorted(allowed)}")
        return principal

    return check


KnowledgeWriter = Annotated[Principal, Depends(require_roles(WRITER_ROLES))]

