"""What the web layer hands a chain run besides its input: who asked, and on what request.

It rides in `config["configurable"]` under a `__`-prefixed key, which LangChain never
copies into trace metadata and clients cannot set (LangServe drops undeclared keys,
and the per-request modifier overwrites it anyway).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from langchain_core.runnables import RunnableConfig
from starlette.requests import Request

from app.core.auth import Principal

RUN_CONTEXT_KEY = "__crm_run"
DISCONNECT_POLL_S = 0.2


@dataclass(frozen=True, slots=True)
class RunContext:
    principal: Principal
    request: Request | None = None
    arrived_at: float | None = None  # loop.time() when the request reached the chain layer

    async def wait_disconnected(self) -> None:
        """Returns once the client has gone. Polls: the body is read, so the next
        receive() only ever says `http.disconnect`, and polling is safe to share
        between the runs of one batch request."""
        if self.request is None:
            await asyncio.Event().wait()
            return
        while not await self.request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_S)


def run_context_of(config: RunnableConfig | None) -> RunContext | None:
    value = ((config or {}).get("configurable") or {}).get(RUN_CONTEXT_KEY)
    return value if isinstance(value, RunContext) else None
