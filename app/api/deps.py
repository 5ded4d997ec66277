"""Annotated dependency aliases: what a route needs, named for what it grants.

Which roles may call a route is decided in one place, `app.api.access`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path
from starlette.requests import HTTPConnection

from app.core.auth import Principal, authenticate
from app.core.config import Settings
from app.core.services import Services
from app.core.workflows import WorkflowRunner
from chains.schemas import CUSTOMER_ID_RULES


def get_services(conn: HTTPConnection) -> Services:
    services: Services = conn.app.state.services
    return services


def get_app_settings(conn: HTTPConnection) -> Settings:
    return get_services(conn).settings


def get_workflows(conn: HTTPConnection) -> WorkflowRunner:
    workflows: WorkflowRunner = conn.app.state.workflows
    return workflows


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
CurrentPrincipal = Annotated[Principal, Depends(authenticate)]
WorkflowsDep = Annotated[WorkflowRunner, Depends(get_workflows)]
CustomerIdPath = Annotated[str, Path(**CUSTOMER_ID_RULES)]
