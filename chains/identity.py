"""The identity of a run, as the server put it into the run's config.

The web layer writes `tenant_id` and `user_id` into `config["configurable"]` from the
verified token, overwriting anything a client sent. They are never declared as
configurable fields, so clients cannot set them; chains read them only through here,
and a run without them fails closed.
"""

from __future__ import annotations

from dataclasses import dataclass

from langchain_core.runnables import RunnableConfig


class MissingIdentity(RuntimeError):
    """A chain ran without server-injected identity: refuse rather than guess a tenant."""


@dataclass(frozen=True, slots=True)
class RunIdentity:
    tenant_id: str
    user_id: str


def identity_from_config(config: RunnableConfig | None) -> RunIdentity:
    configurable = (config or {}).get("configurable") or {}
    tenant_id = configurable.get("tenant_id")
    user_id = configurable.get("user_id")
    if not isinstance(tenant_id, str) or not isinstance(user_id, str) or not tenant_id:
        raise MissingIdentity("run has no server-injected identity")
    return RunIdentity(tenant_id=tenant_id, user_id=user_id)


def identity_config(tenant_id: str, user_id: str) -> RunnableConfig:
    """A config carrying identity, for in-process callers (tests, background jobs)."""
    return {"configurable": {"tenant_id": tenant_id, "user_id": user_id}}
